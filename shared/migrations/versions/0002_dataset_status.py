"""Datasets are inspected on a worker: a status and the inspection's own error (git be5e7ef).

Rows from before were inspected in the upload request, so they are finished: ready, or failed when their report
had errors (today's meaning of failed).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add datasets.status (ready or failed for existing rows) and datasets.error."""
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="ready"))
        batch.add_column(sa.Column("error", sa.Text()))
    datasets = sa.table("datasets", sa.column("status", sa.String), sa.column("has_errors", sa.Boolean))
    op.execute(datasets.update().where(datasets.c.has_errors == sa.true()).values(status="failed"))
    with op.batch_alter_table("datasets") as batch:  # the models set the status; the default was for old rows
        batch.alter_column("status", server_default=None)


def downgrade() -> None:
    """Drop datasets.status and datasets.error."""
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("error")
        batch.drop_column("status")
