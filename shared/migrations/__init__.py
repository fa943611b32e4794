"""Alembic's environment and the migration scripts (versions/), run by `graft db upgrade` (graft.shared.schema)."""
