"""create_app with a Config or overrides of the environment's, against a real Redis."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from graft.shared.config import Config, get_config
from graft.shared.db import get_engine


@pytest.fixture()
def fresh_get_config() -> Iterator[None]:
    """Forget the cached process Config before and after the test."""
    get_config.cache_clear()
    yield
    get_config.cache_clear()


def test_create_app_with_overrides(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, fresh_get_config: None
) -> None:
    from graft.api import create_app

    monkeypatch.setenv("GRAFT_QUEUE", "queue-from-env")
    url = f"sqlite:///{tmp_path / 'app.db'}"
    app = create_app({"database_url": url, "db_auto_upgrade": True, "redis_url": redis_url, "api_tokens": ["t"],
                      "max_body_mb": 3, "data_roots": [str(tmp_path)], "artifacts_dir": str(tmp_path / "arts")})
    try:
        config = app.config["GRAFT"]
        assert isinstance(config, Config)
        assert config.database_url == url and config.api_tokens == ("t",) and config.queue == "queue-from-env"
        assert config.data_roots == (tmp_path.resolve(),) and config.artifacts_dir == tmp_path / "arts"
        assert app.config["MAX_CONTENT_LENGTH"] == 3 * 1024 * 1024
        client = app.test_client()
        health = client.get("/healthz").get_json()
        assert {k: health[k] for k in ("status", "database", "redis")} == {"status": "ok", "database": True, "redis": True}
        assert client.get("/api/v1/jobs").status_code == 401 and client.get("/api/v1/models").status_code == 401
        response = client.get("/api/v1/jobs", headers={"Authorization": "Bearer t"})
        assert response.status_code == 200 and response.get_json()["items"] == []
    finally:
        get_engine(url).dispose()


def test_create_app_with_a_config(tmp_path: Path, redis_url: str) -> None:
    from graft.api import create_app

    config = Config.from_env({"GRAFT_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}", "GRAFT_REDIS_URL": redis_url,
                              "GRAFT_DB_AUTO_UPGRADE": "1"})
    app = create_app(config)
    try:
        assert app.config["GRAFT"] is config
        assert app.test_client().get("/api/v1/jobs").status_code == 401  # no tokens configured: closed
        opened = create_app(config.replace(insecure_no_auth=True))  # the explicit opt-out
        assert opened.test_client().get("/api/v1/jobs").status_code == 200
        second = create_app(config.replace(api_tokens=["x"]))  # a second app in one process keeps its own auth
        assert second.test_client().get("/api/v1/jobs").status_code == 401
        assert second.test_client().get("/api/v1/jobs", headers={"Authorization": "Bearer x"}).status_code == 200
        assert opened.test_client().get("/api/v1/jobs").status_code == 200
    finally:
        get_engine(config.database_url).dispose()
