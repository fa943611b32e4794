"""docker-compose.yml, Dockerfile and .dockerignore: structure, scaling safety, env and commands."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from graft.cli.main import build_parser, worker_queues

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
GRAFT = ("api", "worker", "worker-interactive")
WORKERS = ("worker", "worker-interactive")
DB_URL = "postgresql+psycopg://graft:${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}@postgres:5432/graft"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed compose file (anchors and merge keys resolved)."""
    return yaml.safe_load(COMPOSE.read_text())


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Named-volume source → container path, for short and long volume syntax."""
    mounts = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source, target = entry.split(":")[:2]
        else:
            source, target = entry["source"], entry["target"]
        mounts[source] = target
    return mounts


def _healthy_deps(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on", {})
    assert isinstance(deps, dict), "depends_on must use the long form with a condition"
    return {name: spec.get("condition") for name, spec in deps.items()}


def test_services_and_volumes(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"redis", "postgres", "migrate", "api", "front", "worker",
                                        "worker-interactive"}
    assert {"artifacts", "data"} <= set(compose["volumes"])
    assert compose["services"]["redis"]["image"].startswith("redis:")
    assert compose["services"]["postgres"]["image"].startswith("postgres:")


def test_worker_can_scale(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert "container_name" not in service, f"{name}: container_name prevents --scale"
    worker = compose["services"]["worker"]
    assert "ports" not in worker and "hostname" not in worker
    assert "deploy" not in worker or "replicas" not in worker["deploy"]  # the --scale flag decides
    assert all(":" in str(p) for p in compose["services"]["api"].get("ports", []))


def test_api_and_worker_share_artifacts_and_data(compose: dict[str, Any]) -> None:
    api, worker, interactive = (compose["services"][name] for name in GRAFT)
    assert _mounts(api) == _mounts(worker) == _mounts(interactive)
    mounts = _mounts(api)
    assert {"artifacts", "data"} <= set(mounts)
    for service in (api, worker, interactive):
        env = service["environment"]
        assert env["GRAFT_DATA_ROOTS"].split(":") == [mounts["data"]]
        assert env["GRAFT_ARTIFACTS_DIR"] == mounts["artifacts"]


def test_environment(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in (*GRAFT, "migrate"):
        env = services[name]["environment"]
        assert env["GRAFT_DATABASE_URL"] == DB_URL
        assert env["GRAFT_REDIS_URL"] == "redis://redis:6379/0"
    # No default secret: ${VAR:?message} makes compose refuse to start while one is unset. Static admin tokens are
    # optional (empty by default): the API starts on users' tokens, made with `docker compose run`, as the header says.
    assert services["api"]["environment"]["GRAFT_API_TOKENS"] == "${GRAFT_API_TOKENS:-}"
    header = COMPOSE.read_text().split("\nx-graft-image")[0]
    assert "docker compose run --rm api graft users add" in header and "--admin" in header
    for name in WORKERS:
        assert "GRAFT_API_TOKENS" not in services[name]["environment"]  # workers serve no HTTP
    pg = services["postgres"]["environment"]
    assert pg["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert f"{pg['POSTGRES_USER']}:${{POSTGRES_PASSWORD:?" in DB_URL and f"/{pg['POSTGRES_DB']}" in DB_URL
    assert "change-me" not in COMPOSE.read_text()


def test_healthchecks_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        if name == "migrate":  # one-shot: it is waited for to exit 0, not to be healthy
            continue
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    for name in GRAFT:
        deps = _healthy_deps(services[name])
        assert deps["redis"] == deps["postgres"] == "service_healthy"
        assert deps["migrate"] == "service_completed_successfully", name  # never start on a schema that is behind


def test_migrate_runs_once_before_the_rest(compose: dict[str, Any]) -> None:
    migrate = compose["services"]["migrate"]
    assert migrate["command"] == ["graft", "db", "upgrade"]
    args = build_parser().parse_args(migrate["command"][1:])
    assert (args.command, args.action) == ("db", "upgrade")
    assert migrate["restart"] == "no"  # a one-shot that restarted would never count as completed
    assert _healthy_deps(migrate) == {"postgres": "service_healthy"}
    assert "ports" not in migrate and migrate["build"] == compose["services"]["api"]["build"]


def test_commands(compose: dict[str, Any]) -> None:
    api, worker, interactive = (compose["services"][name]["command"] for name in GRAFT)
    assert api == ["graft", "api", "--host", "0.0.0.0", "--port", "8000"]
    assert worker[:4] == ["graft", "worker", "--name", "worker@%h"]
    args = build_parser().parse_args(api[1:])
    assert (args.command, args.host, args.port) == ("api", "0.0.0.0", 8000)
    args = build_parser().parse_args([a.replace("${GRAFT_WORKER_CONCURRENCY:-1}", "1") for a in worker[1:]])
    assert args.command == "worker" and args.name == "worker@%h"  # has '@': passed to Celery as is, %h expanded
    kinds = [q.rsplit(".", 1)[1] for q in worker_queues(args.queues)]
    assert kinds == ["train", "batch"]  # the training workers take no interactive work
    args = build_parser().parse_args(interactive[1:])
    assert args.concurrency == 1 and [q.rsplit(".", 1)[1] for q in worker_queues(args.queues)] == ["interactive"]
    assert "ports" not in compose["services"]["api"]  # only through the front


def test_the_api_is_reached_through_nginx(compose: dict[str, Any]) -> None:
    """Idle and slow clients meet nginx (deploy/nginx.conf, tested in tests/service/test_slow_clients.py) first."""
    front = compose["services"]["front"]
    assert front["image"].startswith("nginx:") and str(front["ports"][0]).endswith(":8080")
    assert front["volumes"] == ["./deploy/nginx.conf:/etc/nginx/nginx.conf:ro"]
    conf = (Path(__file__).parents[2] / "deploy" / "nginx.conf").read_text()
    assert "server api:8000;" in conf and "listen 8080;" in conf and "proxy_request_buffering off;" in conf
    assert compose["services"]["api"]["environment"]["GRAFT_TRUSTED_PROXIES"] == "1"


def test_graft_services_build_the_dockerfile(compose: dict[str, Any]) -> None:
    for name in GRAFT:
        build = compose["services"][name]["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        assert (COMPOSE.parent / context / "Dockerfile").is_file()


def test_dockerfile() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    assert next(line for line in lines if line.startswith("FROM")) == "FROM python:3.11-slim"
    text = "\n".join(lines)
    assert "pip install --extra-index-url https://download.pytorch.org/whl/cpu ." in text
    for copied in ("pyproject.toml", "README.md"):
        assert copied in text
    for room in ("shared", "api", "worker", "cli", "client"):  # every room the package-dir mapping installs
        assert f"COPY {room} ./{room}" in text
    assert "USER graft" in text


def test_dockerignore_keeps_the_build_context_small() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "var"} <= ignored
    assert not {"pyproject.toml", "README.md", "shared", "api", "worker", "cli", "client"} & ignored


def _compose_plugin() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    result = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
    return result.returncode == 0


def test_docker_compose_config_accepts_the_file() -> None:
    if not _compose_plugin():
        pytest.skip("the docker compose plugin is not installed here: structure checked with PyYAML only")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    env.pop("GRAFT_API_TOKENS", None)  # optional: compose accepts the file without it
    env.update(POSTGRES_PASSWORD="p")  # the one secret it refuses to start without
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
