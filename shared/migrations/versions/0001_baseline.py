"""Baseline: the tables of the last release before migrations (git 5a9476b), as its create_all made them.

A database made by that release (or a later one, before migrations) has no alembic_version table: `graft db upgrade`
recognises it by its tables and stamps it (graft.shared.schema.legacy_revision) instead of running this.
Frozen: a change to the models is a new revision, never an edit here.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create jobs, job_events, models, datasets and prediction_results."""
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("worker", sa.String(255)),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker_pid", sa.Integer()),
        sa.Column("lease_expires_at", TZ),
        sa.Column("heartbeat_at", TZ),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("started_at", TZ),
        sa.Column("finished_at", TZ),
    )
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_index("ix_jobs_lease_expires_at", "jobs", ["lease_expires_at"])
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])

    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("from_status", sa.String(16)),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("message", sa.Text()),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_index("ix_job_events_job_id", "job_events", ["job_id"])

    op.create_table(
        "models",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("backbone", sa.String(64), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("image_size", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_index("ix_models_job_id", "models", ["job_id"], unique=True)
    op.create_index("ix_models_created_at", "models", ["created_at"])

    op.create_table(
        "datasets",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("num_images", sa.Integer(), nullable=False),
        sa.Column("has_errors", sa.Boolean(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_index("ix_datasets_created_at", "datasets", ["created_at"])

    op.create_table(
        "prediction_results",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("chunk", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("label", sa.String(255)),
        sa.Column("confidence", sa.Float()),
        sa.Column("top_k", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("worker", sa.String(255)),
        sa.UniqueConstraint("job_id", "path", name="uq_prediction_results_job_path"),
    )
    op.create_index("ix_prediction_results_job_id", "prediction_results", ["job_id"])


def downgrade() -> None:
    """Drop every table (children first)."""
    for table in ("prediction_results", "datasets", "models", "job_events", "jobs"):
        op.drop_table(table)
