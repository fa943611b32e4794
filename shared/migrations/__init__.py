"""Alembic's environment and the migration scripts (versions/); run them with `graft db upgrade` (graft.shared.schema)."""
