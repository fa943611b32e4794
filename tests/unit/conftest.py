"""The unit tier's rule: no Redis, PostgreSQL (unless marked `postgres`), worker processes or service app.

A unit test that asks for a service fixture, directly or through another fixture, stops the run at collection.
Fixtures fetched lazily with request.getfixturevalue are not seen here (test_state_machine's db_url uses that
for its `postgres`-marked param, which is allowed).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from graft.cli.sampledata import make_shapes_dataset

UNIT = Path(__file__).resolve().parent
SERVICE_FIXTURES = frozenset({"redis_url", "worker", "service_env", "service_config", "app", "client", "http_app",
                              "data_root"})
POSTGRES_FIXTURE = "postgres_url"  # empty_postgres_url and postgres_admin use it, so they count too


def _offence(item: pytest.Item) -> str | None:
    """Why item breaks the unit tier's rule, or None."""
    used = set(getattr(item, "fixturenames", ()))  # the closure: fixtures the test's fixtures use count too
    services = sorted(used & SERVICE_FIXTURES)
    if services:
        return f"{item.nodeid} uses service fixture(s) {', '.join(services)}"
    if POSTGRES_FIXTURE in used and item.get_closest_marker("postgres") is None:
        return f"{item.nodeid} uses {POSTGRES_FIXTURE} without the `postgres` marker"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse unit tests that need services (this hook sees every collected item, so keep to tests/unit)."""
    offences = [why for item in items if Path(item.path).resolve().is_relative_to(UNIT) and (why := _offence(item))]
    if offences:
        raise pytest.UsageError("unit tests may not use services (move them to tests/service):\n  "
                                + "\n  ".join(offences))


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of 10 small generated images (read only: a test that changes data copies it first)."""
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "shapes", per_class=10, size=48,
                               classes=("circles", "squares"))
