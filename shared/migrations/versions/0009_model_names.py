"""Models have a name and remember the dataset they were trained on.

Revision 0009, after 0008. Existing models keep no name (they are shown as their backbone and id) and no dataset.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """models.name and models.dataset_id, both nullable."""
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("name", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("dataset_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    """Drop them."""
    with op.batch_alter_table("models") as batch:
        batch.drop_column("dataset_id")
        batch.drop_column("name")
