"""SQLAlchemy 2 models: every table of Graft (users and their tokens, jobs, their events, trained models, datasets,
uploads, predict chunks and rows)."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """Timezone-aware now, stored as UTC."""
    return datetime.now(timezone.utc)


def new_id() -> str:
    """A random 32-hex-digit id."""
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    """Declarative base for Graft's tables."""

    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class User(Base):
    """A named principal: owns jobs, models, datasets and uploads; an admin sees and acts on everyone's."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    # Per-user quota overrides: None follows GRAFT_QUOTA_ACTIVE_JOBS / GRAFT_QUOTA_STORAGE_MB, 0 is unlimited.
    max_jobs: Mapped[int | None] = mapped_column(Integer, default=None)
    max_storage_mb: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """One of a user's API tokens: only its SHA-256 is stored; id is the public part that names it."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookSecret(Base):
    """One of a user's webhook secrets: its public id and a random seed; the secret is derived from them and
    GRAFT_WEBHOOK_KEY (graft.shared.webhook_secrets), never stored."""

    __tablename__ = "webhook_secrets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    seed: Mapped[str] = mapped_column(String(64))  # 32 random bytes, hex
    server_key: Mapped[str] = mapped_column(String(16))  # the fingerprint of the GRAFT_WEBHOOK_KEY it derives from
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


def _owner() -> Mapped[str | None]:
    # NULL: a row from before owners (or made with a GRAFT_API_TOKENS token): only admins see it.
    return mapped_column(ForeignKey("users.id"), default=None, index=True)


class Job(Base):
    """A training or prediction job; its status only changes through shared.lifecycle."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(16))
    owner_id: Mapped[str | None] = _owner()
    status: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    worker: Mapped[str | None] = mapped_column(String(255), default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The lease: who runs the job (node name and pool-process pid) and until when, unless renewed.
    worker_pid: Mapped[int | None] = mapped_column(Integer, default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    events: Mapped[list["JobEvent"]] = relationship(
        back_populates="job", order_by="JobEvent.id", cascade="all, delete-orphan"
    )


class JobEvent(Base):
    """One recorded state transition of a job."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="events")


class TrainedModel(Base):
    """A model produced by a successful training job; its files live under the artifacts dir."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True, index=True)
    owner_id: Mapped[str | None] = _owner()  # the training job's owner
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # its folder when recorded, plus exports built
    backbone: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200), default=None)  # None: made before models had names
    dataset_id: Mapped[str | None] = mapped_column(String(32), default=None)  # the uploaded dataset it learnt from
    classes: Mapped[list[Any]] = mapped_column()
    image_size: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


# Dataset statuses: inspection runs on a worker after the upload is accepted.
INSPECTING, READY, DATASET_FAILED = "inspecting", "ready", "failed"
UPLOAD, SERVER_PATH = "upload", "path"  # where a dataset came from: an upload, or a folder under a data root
DATASET_STATUSES = (INSPECTING, READY, DATASET_FAILED)


class DatasetRecord(Base):
    """A dataset and its inspection report; path is its root folder (ours for uploads, the user's otherwise).

    Not to be confused with the training data a worker decodes (graft.worker.core.dataset.TrainingData).
    """

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255))
    owner_id: Mapped[str | None] = _owner()
    source: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=INSPECTING)
    classes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    num_images: Mapped[int] = mapped_column(Integer, default=0)
    has_errors: Mapped[bool] = mapped_column(Boolean, default=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)  # why inspection itself failed, if it did
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Upload(Base):
    """Who owns an upload folder (artifacts/uploads/<id>) and how many bytes it holds; the files are the folder's.

    A folder without a row predates owners: only admins may use it.
    """

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[str | None] = _owner()
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PredictionResult(Base):
    """The label (or the error) for one file of a predict job; (job_id, path) is unique."""

    __tablename__ = "prediction_results"
    __table_args__ = (UniqueConstraint("job_id", "path", name="uq_prediction_results_job_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    chunk: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(String(255), default=None)
    confidence: Mapped[float | None] = mapped_column(Float, default=None)
    # The ranked labels; since the OOD score, {"ranked": [...], "ood_score", "reason"} (serializers.stored_result).
    top_k: Mapped[list[Any]] = mapped_column(default=list)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    worker: Mapped[str | None] = mapped_column(String(255), default=None)  # which worker classified it


class PredictChunk(Base):
    """One chunk of a predict job's files: who classifies it (a lease, as a training job has) and whether it is done.

    Its state changes only through shared.chunks, each a compare-and-set on (status, attempts).
    """

    __tablename__ = "predict_chunks"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    names: Mapped[list[Any]] = mapped_column()  # the files' paths relative to the job's input folder
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255), default=None)
    worker_pid: Mapped[int | None] = mapped_column(Integer, default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)  # why the last attempt failed, if it raised
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)  # last change: a stalled job's chunks are re-sent


class WebhookDelivery(Base):
    """The outbox row of a job's callback: written with the job's final status, sent and retried by workers.

    next_at is when the next attempt is due (None: no more attempts); attempts doubles as the claim version.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True, index=True)
    url: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    log: Mapped[list[Any]] = mapped_column(default=list)  # the latest attempts: at, status, error, ms
    next_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobLogLine(Base):
    """One log line a worker wrote while running a job (INFO and up, from Graft's own loggers; capped per job)."""

    __tablename__ = "job_log_lines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(16))
    logger: Mapped[str] = mapped_column(String(255))
    worker: Mapped[str | None] = mapped_column(String(255), default=None)
    message: Mapped[str] = mapped_column(Text)
