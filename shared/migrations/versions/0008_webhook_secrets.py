"""Each user's webhook secrets: a public id and a random seed per secret (the secret is derived, never stored).

Revision 0008, after 0007. A new table only: existing users have no secret until `graft webhook-secrets create`.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply the change."""
    op.create_table('webhook_secrets',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('seed', sa.String(length=64), nullable=False),
    sa.Column('server_key', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('webhook_secrets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_secrets_user_id'), ['user_id'], unique=False)



def downgrade() -> None:
    """Undo it."""
    with op.batch_alter_table('webhook_secrets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_secrets_user_id'))

    op.drop_table('webhook_secrets')
