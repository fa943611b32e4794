"""Sizes are 64-bit: datasets.size_bytes BIGINT (a 32-bit INTEGER on PostgreSQL overflows at 2 GiB).

Databases made by create_all since be5e7ef have BIGINT already; the ALTER is then a no-op. Every timestamp column
was already timezone-aware (TIMESTAMP WITH TIME ZONE on PostgreSQL; SQLite stores UTC text and
graft.shared.serializers.iso adds the offset), so no change is needed for them.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """datasets.size_bytes INTEGER → BIGINT."""
    with op.batch_alter_table("datasets") as batch:
        batch.alter_column("size_bytes", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)


def downgrade() -> None:
    """datasets.size_bytes BIGINT → INTEGER (fails on PostgreSQL if a row needs 64 bits)."""
    with op.batch_alter_table("datasets") as batch:
        batch.alter_column("size_bytes", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
