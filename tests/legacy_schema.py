"""The tables of the previous release (git 5a9476b) as its create_all made them, in SQLAlchemy Core.

Frozen on purpose: tests build a database "from before migrations" with these and upgrade it. Never edit them to
follow today's models; the baseline migration (graft.shared.migrations, 0001) creates exactly these tables.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON, Boolean, Column, DateTime, Float, ForeignKey, Integer, MetaData, String, Table, Text, UniqueConstraint,
)
from sqlalchemy.engine import Connection

metadata = MetaData()
TZ = DateTime(timezone=True)

jobs = Table(
    "jobs", metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("params", JSON, nullable=False),
    Column("progress", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("error", Text),
    Column("worker", String(255)),
    Column("attempts", Integer, nullable=False),
    Column("worker_pid", Integer),
    Column("lease_expires_at", TZ, index=True),
    Column("heartbeat_at", TZ),
    Column("cancel_requested", Boolean, nullable=False),
    Column("created_at", TZ, nullable=False, index=True),
    Column("started_at", TZ),
    Column("finished_at", TZ),
)

job_events = Table(
    "job_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(32), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("from_status", String(16)),
    Column("to_status", String(16), nullable=False),
    Column("message", Text),
    Column("created_at", TZ, nullable=False),
)

models = Table(
    "models", metadata,
    Column("id", String(32), primary_key=True),
    Column("job_id", String(32), ForeignKey("jobs.id"), nullable=False, unique=True, index=True),
    Column("backbone", String(64), nullable=False),
    Column("classes", JSON, nullable=False),
    Column("image_size", Integer, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("path", Text, nullable=False),
    Column("created_at", TZ, nullable=False, index=True),
)

datasets = Table(
    "datasets", metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("source", String(16), nullable=False),
    Column("path", Text, nullable=False),
    Column("classes", JSON, nullable=False),
    Column("num_images", Integer, nullable=False),
    Column("has_errors", Boolean, nullable=False),
    Column("size_bytes", Integer, nullable=False),  # 32-bit then: 0004 makes it BIGINT
    Column("report", JSON, nullable=False),
    Column("created_at", TZ, nullable=False, index=True),
)

prediction_results = Table(
    "prediction_results", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(32), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("chunk", Integer, nullable=False),
    Column("path", Text, nullable=False),
    Column("label", String(255)),
    Column("confidence", Float),
    Column("top_k", JSON, nullable=False),
    Column("error", Text),
    Column("worker", String(255)),
    UniqueConstraint("job_id", "path", name="uq_prediction_results_job_path"),
)

T0 = datetime(2026, 11, 28, 16, 0, 0, tzinfo=timezone.utc)
AT = {name: T0.replace(minute=minute) for name, minute in (("created", 1), ("started", 2), ("finished", 30))}
JOB_ID, MODEL_ID, PREDICT_ID = "a" * 32, "b" * 32, "c" * 32
DATASET_IDS = ("d" * 32, "e" * 32)  # a clean dataset and one whose report has errors


def fill(conn: Connection) -> None:
    """Rows as the previous release wrote them: a finished training job with its events and model, a predict job
    with a result row, and two datasets (one with errors, one over 2 GiB, which its 32-bit column could not hold
    on PostgreSQL: stored small here and made big after the upgrade by the test)."""
    conn.execute(jobs.insert(), [
        {"id": JOB_ID, "kind": "train", "status": "succeeded", "params": {"data_dir": "/data/ants-bees", "epochs": 2},
         "progress": {"epoch": 2, "epochs": 2, "fraction": 1.0}, "metrics": {"best_val_acc": 0.9, "history": []},
         "error": None, "worker": "w1@host", "attempts": 1, "worker_pid": 123, "lease_expires_at": None,
         "heartbeat_at": AT["finished"], "cancel_requested": False, "created_at": AT["created"],
         "started_at": AT["started"], "finished_at": AT["finished"]},
        {"id": PREDICT_ID, "kind": "predict", "status": "succeeded", "params": {"model_id": MODEL_ID},
         "progress": {}, "metrics": {}, "error": None, "worker": None, "attempts": 0, "worker_pid": None,
         "lease_expires_at": None, "heartbeat_at": None, "cancel_requested": False, "created_at": AT["finished"],
         "started_at": AT["finished"], "finished_at": AT["finished"]},
    ])
    conn.execute(job_events.insert(), [
        {"job_id": JOB_ID, "from_status": None, "to_status": "queued", "message": None, "created_at": AT["created"]},
        {"job_id": JOB_ID, "from_status": "queued", "to_status": "running", "message": None,
         "created_at": AT["started"]},
        {"job_id": JOB_ID, "from_status": "running", "to_status": "succeeded", "message": None,
         "created_at": AT["finished"]},
    ])
    conn.execute(models.insert(), [
        {"id": MODEL_ID, "job_id": JOB_ID, "backbone": "resnet18", "classes": ["ants", "bees"], "image_size": 224,
         "metrics": {"val_acc": 0.9}, "path": "/var/lib/graft/artifacts/models/" + MODEL_ID,
         "created_at": AT["finished"]},
    ])
    conn.execute(prediction_results.insert(), [
        {"job_id": PREDICT_ID, "chunk": 0, "path": "a.jpg", "label": "ants", "confidence": 0.8,
         "top_k": [["ants", 0.8], ["bees", 0.2]], "error": None, "worker": "w1@host"},
    ])
    report = {"issues": [], "conversions": {}, "layout": "folders", "splits": None, "num_files": 4}
    bad = {**report, "issues": [{"level": "error", "code": "one_class", "message": "only 1 class", "files": [],
                                 "count": 1}]}
    conn.execute(datasets.insert(), [
        {"id": DATASET_IDS[0], "name": "ants-bees", "source": "upload", "path": "/x/datasets/" + DATASET_IDS[0],
         "classes": {"ants": 2, "bees": 2}, "num_images": 4, "has_errors": False, "size_bytes": 2**31 - 1,
         "report": report, "created_at": AT["created"]},
        {"id": DATASET_IDS[1], "name": "one-class", "source": "path", "path": "/data/one-class",
         "classes": {"ants": 2}, "num_images": 2, "has_errors": True, "size_bytes": 10, "report": bad,
         "created_at": AT["created"]},
    ])
