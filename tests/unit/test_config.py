"""Config.from_env, Config.replace and create_app's config argument."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from graft.shared.config import Config, ConfigError


@pytest.fixture()
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test with tmp_path as the working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults(in_tmp: Path) -> None:
    config = Config.from_env({})
    assert config.database_url == f"sqlite:///{in_tmp / 'var' / 'graft.db'}"
    assert config.redis_url == "redis://127.0.0.1:6379/0"
    assert config.artifacts_dir == in_tmp / "var" / "artifacts" and config.artifacts_dir.is_absolute()
    assert config.data_roots == () and config.api_tokens == ()
    assert config.resnet18_weights is None
    assert config.queue == "graft"
    assert config.max_body_mb == 2048 and config.visibility_timeout_s == 6 * 3600
    assert config.url == "http://127.0.0.1:8000" and config.token is None


def test_var_dir_moves_database_and_artifacts(in_tmp: Path) -> None:
    config = Config.from_env({"GRAFT_VAR_DIR": "state"})
    assert config.database_url == f"sqlite:///{in_tmp / 'state' / 'graft.db'}"
    assert config.artifacts_dir == in_tmp / "state" / "artifacts"


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("GRAFT_DATABASE_URL", "postgresql+psycopg://g:g@db:5432/g", "database_url", "postgresql+psycopg://g:g@db:5432/g"),
        ("GRAFT_REDIS_URL", "redis://cache:6380/2", "redis_url", "redis://cache:6380/2"),
        ("GRAFT_QUEUE", "gpu-less", "queue", "gpu-less"),
        ("GRAFT_API_TOKENS", "a, b,,  ,c,", "api_tokens", ("a", "b", "c")),
        ("GRAFT_API_TOKENS", " , ", "api_tokens", ()),
        ("GRAFT_MAX_UPLOAD_MB", "16", "max_body_mb", 16),
        ("GRAFT_MAX_UPLOAD_MB", "", "max_body_mb", 2048),
        ("GRAFT_MAX_FORM_PARTS", "16", "max_form_parts", 16),
        ("GRAFT_MAX_FORM_PARTS", "", "max_form_parts", 1000),
        ("GRAFT_VISIBILITY_TIMEOUT", "600", "visibility_timeout_s", 600),
        ("GRAFT_URL", "http://api:8000/", "url", "http://api:8000"),
        ("GRAFT_TOKEN", "secret", "token", "secret"),
        ("GRAFT_TOKEN", "", "token", None),
        ("GRAFT_RESNET18_WEIGHTS", "", "resnet18_weights", None),
        ("GRAFT_RESNET18_WEIGHTS", "   ", "resnet18_weights", None),
        ("GRAFT_WEBHOOK_KEY", "k" * 32, "webhook_keys", ("k" * 32,)),
        ("GRAFT_WEBHOOK_KEY", f"{'n' * 40}, {'o' * 32}", "webhook_keys", ("n" * 40, "o" * 32)),
        ("GRAFT_WEBHOOK_KEY", "", "webhook_keys", ()),
        ("GRAFT_WEBHOOK_SECRET", "", "webhook_keys", ()),
        ("GRAFT_WEBHOOK_ALLOW", "", "webhook_allow", ()),
        ("GRAFT_WEBHOOK_ALLOW", "10.1.0.0/16, Hooks.Example.com", "webhook_allow", ("10.1.0.0/16", "hooks.example.com")),
        ("GRAFT_WEBHOOK_MAX_SECONDS", "60", "webhook_max_s", 60),
        ("GRAFT_WEBHOOK_MAX_SECONDS", "", "webhook_max_s", 3600),
        ("GRAFT_WEBHOOK_BACKOFF_SECONDS", "1", "webhook_backoff_s", 1),
        ("GRAFT_QUOTA_ACTIVE_JOBS", "4", "quota_active_jobs", 4),
        ("GRAFT_QUOTA_ACTIVE_JOBS", "", "quota_active_jobs", 0),
        ("GRAFT_QUOTA_STORAGE_MB", "20000", "quota_storage_mb", 20000),
        ("GRAFT_CACHE_MB", "0", "cache_mb", 0),
        ("GRAFT_DB_POOL_SIZE", "", "db_pool_size", 5),
        ("GRAFT_DB_POOL_SIZE", "2", "db_pool_size", 2),
        ("GRAFT_DB_POOL_OVERFLOW", "0", "db_pool_overflow", 0),
        ("GRAFT_DB_POOL_TIMEOUT", "10", "db_pool_timeout_s", 10),
        ("GRAFT_CACHE_MB", "", "cache_mb", 2048),
        ("GRAFT_CACHE_DIR", "", "cache_dir", None),
        ("GRAFT_CACHE_DIR", "/srv/graft-cache", "cache_dir", Path("/srv/graft-cache")),
    ],
)
def test_each_variable(in_tmp: Path, name: str, value: str, field: str, expected: object) -> None:
    assert getattr(Config.from_env({name: value}), field) == expected


def test_paths_are_absolute(in_tmp: Path) -> None:
    (in_tmp / "d1").mkdir()
    (in_tmp / "d2").mkdir()
    (in_tmp / "real").mkdir()
    (in_tmp / "alias").symlink_to(in_tmp / "real")
    config = Config.from_env({
        "GRAFT_ARTIFACTS_DIR": "arts",
        "GRAFT_DATA_ROOTS": f"d1::{in_tmp / 'd2'}: :alias",
        "GRAFT_RESNET18_WEIGHTS": "w/resnet18.pth",
    })
    assert config.artifacts_dir == in_tmp / "arts"
    root = in_tmp.resolve()
    assert config.data_roots == (root / "d1", root / "d2", root / "real")  # blanks dropped, symlinks resolved
    assert config.resnet18_weights == in_tmp / "w" / "resnet18.pth"


def test_home_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = Config.from_env({"GRAFT_DATA_ROOTS": "~/photos", "GRAFT_RESNET18_WEIGHTS": "~/w.pth"})
    assert config.data_roots == (tmp_path.resolve() / "photos",)
    assert config.resnet18_weights == tmp_path / "w.pth"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GRAFT_MAX_UPLOAD_MB", "lots"),
        ("GRAFT_MAX_UPLOAD_MB", "1.5"),
        ("GRAFT_MAX_UPLOAD_MB", "0"),
        ("GRAFT_MAX_UPLOAD_MB", "-3"),
        ("GRAFT_MAX_FORM_PARTS", "0"),
        ("GRAFT_VISIBILITY_TIMEOUT", "59"),
        ("GRAFT_VISIBILITY_TIMEOUT", "soon"),
        ("GRAFT_WEBHOOK_BACKOFF_SECONDS", "0"),
        ("GRAFT_CACHE_MB", "-1"),
        ("GRAFT_DB_POOL_SIZE", "0"),
        ("GRAFT_DB_POOL_OVERFLOW", "-1"),
        ("GRAFT_CACHE_MB", "2G"),
        ("GRAFT_WEBHOOK_ALLOW", "10.0.0.0/8, not a host!"),
        ("GRAFT_WEBHOOK_KEY", "too-short-to-derive-secrets"),
        ("GRAFT_WEBHOOK_SECRET", "one key for every user"),  # refused, not ignored: per-user secrets replace it
        ("GRAFT_QUOTA_ACTIVE_JOBS", "-1"),
        ("GRAFT_QUOTA_STORAGE_MB", "a lot"),
    ],
)
def test_bad_numbers_raise_config_error(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: value})
    assert issubclass(ConfigError, ValueError)


def test_replace_converts_and_copies(tmp_path: Path) -> None:
    config = Config.from_env({"GRAFT_QUEUE": "q"})
    changed = config.replace(
        artifacts_dir=str(tmp_path / "a"), resnet18_weights=str(tmp_path / "w.pth"),
        data_roots=[str(tmp_path)], api_tokens=["t1", "t2"], max_body_mb=5,
    )
    assert changed.artifacts_dir == tmp_path / "a" and isinstance(changed.artifacts_dir, Path)
    assert changed.resnet18_weights == tmp_path / "w.pth"
    assert changed.data_roots == (tmp_path.resolve(),) and changed.api_tokens == ("t1", "t2")
    assert (changed.max_body_mb, changed.queue) == (5, "q")
    assert config.max_body_mb == 2048 and config.api_tokens == ()  # the original is untouched
    with pytest.raises(TypeError):
        config.replace(colour="blue")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.queue = "other"  # type: ignore[misc]


def test_secrets_can_come_from_files(tmp_path: Path) -> None:
    tokens, db = tmp_path / "tokens", tmp_path / "db"
    tokens.write_text("a\nb, c\n")
    db.write_text("postgresql+psycopg://graft:s3cret@db/graft\n")
    config = Config.from_env({"GRAFT_API_TOKENS_FILE": str(tokens), "GRAFT_DATABASE_URL_FILE": str(db)})
    assert config.api_tokens == ("a", "b", "c") and config.database_url == "postgresql+psycopg://graft:s3cret@db/graft"
    with pytest.raises(ConfigError, match="not both"):
        Config.from_env({"GRAFT_API_TOKENS": "x", "GRAFT_API_TOKENS_FILE": str(tokens)})
    with pytest.raises(ConfigError, match="GRAFT_WEBHOOK_KEY_FILE: cannot read"):
        Config.from_env({"GRAFT_WEBHOOK_KEY_FILE": str(tmp_path / "missing")})
    assert not Config.from_env({}).insecure_no_auth and Config.from_env({"GRAFT_INSECURE_NO_AUTH": "1"}).insecure_no_auth


def test_the_worker_cache_defaults_under_the_artifacts(in_tmp: Path) -> None:
    """GRAFT_CACHE_DIR unset: the worker cache lives in <artifacts>/cache; set: there."""
    assert Config.from_env({}).worker_cache_dir == Config.from_env({}).artifacts_dir / "cache"
    assert Config.from_env({"GRAFT_CACHE_DIR": str(in_tmp / "c")}).worker_cache_dir == in_tmp / "c"
