"""Graft settings: read from GRAFT_* environment variables once, here and nowhere else."""
from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    """A GRAFT_* variable holds a value that cannot be used."""


def _split(value: str, sep: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(sep) if part.strip())


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of choices (the first when unset)."""
    value = (env.get(name) or choices[0]).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0 (true/false, yes/no, on/off), got {env.get(name)!r}")


def _rate(env: Mapping[str, str], name: str, default: str) -> str:
    """A rate in the limits library's notation ("30/minute", "100 per hour")."""
    value = (env.get(name) or default).strip()
    if not re.fullmatch(r"\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day)s?", value):
        raise ConfigError(f"{name} must be a rate such as 30/minute, got {value!r}")
    return value


def _secret(env: Mapping[str, str], name: str) -> str:
    """name's value, or the contents of the file named by name_FILE (Docker and Kubernetes secrets); "" if neither."""
    value = env.get(name, "")
    path = env.get(f"{name}_FILE", "").strip()
    if not path:
        return value
    if value:
        raise ConfigError(f"set {name} or {name}_FILE, not both")
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None


_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


def _allow_list(env: Mapping[str, str]) -> tuple[str, ...]:
    """GRAFT_WEBHOOK_ALLOW: CIDRs or exact host names a callback may reach although internal; unset: none."""
    entries = tuple(e.lower() for e in _split(env.get("GRAFT_WEBHOOK_ALLOW", ""), ","))
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if not _HOSTNAME.match(entry):
                raise ConfigError(f"GRAFT_WEBHOOK_ALLOW: {entry!r} is neither a CIDR nor a host name") from None
    return entries


WEBHOOK_KEY_MIN_CHARS = 32  # users' webhook secrets are derived from it: it must not be guessable


def _webhook_keys(env: Mapping[str, str]) -> tuple[str, ...]:
    """GRAFT_WEBHOOK_KEY: the server keys users' webhook secrets are derived from, newest first (comma-separated)."""
    if _secret(env, "GRAFT_WEBHOOK_SECRET"):
        # A shared signing key would sign every user's callbacks alike: refuse it rather than ignore it silently.
        raise ConfigError("GRAFT_WEBHOOK_SECRET is not used: callbacks are signed with each user's own secret "
                          "(graft webhook-secrets create NAME), derived from GRAFT_WEBHOOK_KEY; unset it")
    keys = _split(_secret(env, "GRAFT_WEBHOOK_KEY").replace("\n", ","), ",")
    if any(len(key) < WEBHOOK_KEY_MIN_CHARS for key in keys):
        raise ConfigError(f"GRAFT_WEBHOOK_KEY: each key needs at least {WEBHOOK_KEY_MIN_CHARS} characters "
                          "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return keys


@dataclass(frozen=True)
class Config:
    """Everything the API, the workers and the CLI need to know about their surroundings."""

    database_url: str = "sqlite:///var/graft.db"
    # Off: the API and workers refuse a schema that is behind (`graft db upgrade` first). On: they upgrade it at start.
    db_auto_upgrade: bool = False
    # Per process (each API process, each worker child and each worker's main process has its own pool): at most
    # size + overflow PostgreSQL connections, waiting up to timeout for one (docs/operations.md sizes them).
    db_pool_size: int = 5
    db_pool_overflow: int = 5
    db_pool_timeout_s: int = 30
    insecure_no_auth: bool = False  # no token needed at all: local development on loopback only (`graft api` checks)
    auth_fail_limit: str = "30/minute"  # failed authentications per client address before 429 (limits' notation)
    trusted_proxies: int = 0  # proxy hops in front of the API whose X-Forwarded-For names the client (0: none)
    redis_url: str = "redis://127.0.0.1:6379/0"
    artifacts_dir: Path = Path("var/artifacts")
    data_roots: tuple[Path, ...] = ()
    api_tokens: tuple[str, ...] = ()
    resnet18_weights: Path | None = None
    queue: str = "graft"  # prefix of the three queues: <queue>.train, <queue>.batch, <queue>.interactive
    visibility_timeout_s: int = 6 * 3600
    lease_s: int = 60
    max_attempts: int = 3
    sweep_s: float = 0.0  # 0: a quarter of the lease
    requeue_s: int = 300  # a job queued this long with no event gets its message sent again (it may have been lost)
    max_body_mb: int = 2048
    max_form_parts: int = 1000  # parts (files and fields) in one multipart request; more is a 400
    max_image_pixels: int = 50_000_000
    archive_max_members: int = 100_000  # files and folders (a path's folders included) one archive or upload makes
    archive_max_bytes: int = 10 * 1024**3
    archive_max_ratio: int = 100
    sync_predict_wait_s: int = 30  # the synchronous predict endpoint waits this long, then answers 202 with a job
    url: str = "http://127.0.0.1:8000"
    token: str | None = None
    webhook_keys: tuple[str, ...] = ()  # users' webhook secrets derive from the first; unset: callbacks are refused
    webhook_allow: tuple[str, ...] = ()  # internal addresses callbacks may reach anyway: CIDRs or exact host names
    webhook_max_s: int = 3600  # retry a failing callback for this long after the job ended, then give up
    webhook_backoff_s: int = 10  # first retry delay; it doubles each attempt (capped at 10 min), with jitter
    gc_interval_s: int = 3600  # each worker runs the retention pass this often (0: only `graft gc`)
    gc_upload_age_s: int = 24 * 3600  # an upload no queued or running job reads goes after this long untouched
    gc_staging_age_s: int = 6 * 3600  # a dataset upload's staging folder untouched this long was abandoned
    gc_orphan_age_s: int = 6 * 3600  # checkpoints of a vanished job, model folders without a row: after this long
    gc_keep_checkpoints: bool = False  # keep finished jobs' checkpoint folders (debugging) instead of removing them
    min_free_mb: int = 1024  # uploads are refused with 507 when the artifacts disk has less free space than this
    # Per-user quotas (0: unlimited); `graft users set NAME --max-jobs/--max-storage-mb` overrides them per user.
    quota_active_jobs: int = 0  # queued + running jobs a user may have; one more is refused with 429
    quota_storage_mb: int = 0  # uploaded datasets + uploads + models a user may store; more is refused with 507
    export_builds_per_user: int = 2  # model export builds a user may have queued or running; one more is a 429
    cache_dir: Path | None = None  # a worker's cache of decoded images and trunk outputs (None: <artifacts>/cache)
    cache_mb: int = 2048  # most disk that cache may take (least recently used entries go first); 0: no cache
    log_format: str = "text"  # or "json": one JSON object per line (time, level, logger, message, job_id)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Config":
        """Build a Config from GRAFT_* variables (defaults where unset)."""
        env = os.environ if env is None else env
        var = Path(env.get("GRAFT_VAR_DIR", "var"))
        weights = env.get("GRAFT_RESNET18_WEIGHTS", "").strip()
        return cls(
            database_url=_secret(env, "GRAFT_DATABASE_URL") or f"sqlite:///{(var / 'graft.db').absolute()}",
            db_auto_upgrade=_flag(env, "GRAFT_DB_AUTO_UPGRADE", cls.db_auto_upgrade),
            db_pool_size=_int(env, "GRAFT_DB_POOL_SIZE", cls.db_pool_size, 1),
            db_pool_overflow=_int(env, "GRAFT_DB_POOL_OVERFLOW", cls.db_pool_overflow, 0),
            db_pool_timeout_s=_int(env, "GRAFT_DB_POOL_TIMEOUT", cls.db_pool_timeout_s, 1),
            insecure_no_auth=_flag(env, "GRAFT_INSECURE_NO_AUTH", cls.insecure_no_auth),
            auth_fail_limit=_rate(env, "GRAFT_AUTH_FAIL_LIMIT", cls.auth_fail_limit),
            trusted_proxies=_int(env, "GRAFT_TRUSTED_PROXIES", cls.trusted_proxies, 0),
            redis_url=_secret(env, "GRAFT_REDIS_URL") or cls.redis_url,
            artifacts_dir=Path(env.get("GRAFT_ARTIFACTS_DIR") or var / "artifacts").absolute(),
            data_roots=tuple(Path(p).expanduser().resolve() for p in _split(env.get("GRAFT_DATA_ROOTS", ""), ":")),
            api_tokens=_split(_secret(env, "GRAFT_API_TOKENS").replace("\n", ","), ","),
            resnet18_weights=Path(weights).expanduser().absolute() if weights else None,
            queue=env.get("GRAFT_QUEUE") or cls.queue,
            visibility_timeout_s=_int(env, "GRAFT_VISIBILITY_TIMEOUT", cls.visibility_timeout_s, 60),
            lease_s=_int(env, "GRAFT_LEASE_SECONDS", cls.lease_s, 2),
            max_attempts=_int(env, "GRAFT_MAX_ATTEMPTS", cls.max_attempts, 1),
            sweep_s=_int(env, "GRAFT_SWEEP_SECONDS", 0, 0),
            requeue_s=_int(env, "GRAFT_REQUEUE_SECONDS", cls.requeue_s, 1),
            max_body_mb=_int(env, "GRAFT_MAX_UPLOAD_MB", cls.max_body_mb, 1),
            max_form_parts=_int(env, "GRAFT_MAX_FORM_PARTS", cls.max_form_parts, 1),
            max_image_pixels=_int(env, "GRAFT_MAX_IMAGE_PIXELS", cls.max_image_pixels, 1),
            archive_max_members=_int(env, "GRAFT_ARCHIVE_MAX_MEMBERS", cls.archive_max_members, 1),
            archive_max_bytes=_int(env, "GRAFT_ARCHIVE_MAX_BYTES", cls.archive_max_bytes, 1),
            archive_max_ratio=_int(env, "GRAFT_ARCHIVE_MAX_RATIO", cls.archive_max_ratio, 1),
            sync_predict_wait_s=_int(env, "GRAFT_SYNC_PREDICT_WAIT_SECONDS", cls.sync_predict_wait_s, 1),
            url=(env.get("GRAFT_URL") or cls.url).rstrip("/"),
            token=env.get("GRAFT_TOKEN") or None,
            webhook_keys=_webhook_keys(env),
            webhook_allow=_allow_list(env),
            webhook_max_s=_int(env, "GRAFT_WEBHOOK_MAX_SECONDS", cls.webhook_max_s, 0),
            webhook_backoff_s=_int(env, "GRAFT_WEBHOOK_BACKOFF_SECONDS", cls.webhook_backoff_s, 1),
            gc_interval_s=_int(env, "GRAFT_GC_INTERVAL_SECONDS", cls.gc_interval_s, 0),
            gc_upload_age_s=_int(env, "GRAFT_GC_UPLOAD_SECONDS", cls.gc_upload_age_s, 0),
            gc_staging_age_s=_int(env, "GRAFT_GC_STAGING_SECONDS", cls.gc_staging_age_s, 0),
            gc_orphan_age_s=_int(env, "GRAFT_GC_ORPHAN_SECONDS", cls.gc_orphan_age_s, 0),
            gc_keep_checkpoints=_flag(env, "GRAFT_GC_KEEP_CHECKPOINTS", cls.gc_keep_checkpoints),
            min_free_mb=_int(env, "GRAFT_MIN_FREE_MB", cls.min_free_mb, 0),
            quota_active_jobs=_int(env, "GRAFT_QUOTA_ACTIVE_JOBS", cls.quota_active_jobs, 0),
            quota_storage_mb=_int(env, "GRAFT_QUOTA_STORAGE_MB", cls.quota_storage_mb, 0),
            export_builds_per_user=_int(env, "GRAFT_EXPORT_BUILDS_PER_USER", cls.export_builds_per_user, 1),
            cache_dir=Path(env["GRAFT_CACHE_DIR"]).expanduser().absolute() if env.get("GRAFT_CACHE_DIR", "").strip()
            else None,
            cache_mb=_int(env, "GRAFT_CACHE_MB", cls.cache_mb, 0),
            log_format=_choice(env, "GRAFT_LOG_FORMAT", ("text", "json")),
        )

    @property
    def sweep_interval_s(self) -> float:
        """How often workers look for jobs whose lease expired."""
        return self.sweep_s or max(1.0, self.lease_s / 4)

    @property
    def datasets_dir(self) -> Path:
        """Where uploaded datasets are stored, one folder per dataset id."""
        return Path(self.artifacts_dir) / "datasets"

    @property
    def worker_cache_dir(self) -> Path:
        """Where a worker keeps decoded images and frozen-trunk outputs between jobs (GRAFT_CACHE_DIR)."""
        return Path(self.cache_dir) if self.cache_dir is not None else Path(self.artifacts_dir) / "cache"

    @property
    def train_roots(self) -> tuple[Path, ...]:
        """Folders a training job may read: the data roots and the uploaded datasets."""
        return (*self.data_roots, Path(self.datasets_dir).resolve())

    def replace(self, **changes: Any) -> "Config":
        """A copy with some fields changed (paths given as str are converted)."""
        for key in ("artifacts_dir", "resnet18_weights", "cache_dir"):
            if isinstance(changes.get(key), str):
                changes[key] = Path(changes[key])
        if "data_roots" in changes:
            changes["data_roots"] = tuple(Path(p).resolve() for p in changes["data_roots"])
        if "api_tokens" in changes:
            changes["api_tokens"] = tuple(changes["api_tokens"])
        return dataclasses.replace(self, **changes)


@functools.lru_cache(maxsize=1)
def get_config() -> Config:
    """The process-wide Config, read from the environment on first use."""
    return Config.from_env()
