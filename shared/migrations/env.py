"""Alembic's environment: Graft's tables, on the connection graft.shared.schema hands over (no alembic.ini)."""
from __future__ import annotations

from alembic import context

from graft.shared.models import Base

# Batch mode: SQLite cannot ALTER a column, so Alembic copies the table; on PostgreSQL the same ops are plain ALTERs.
OPTIONS = {"target_metadata": Base.metadata, "render_as_batch": True, "compare_type": True}

connection = context.config.attributes.get("connection")
if connection is None:  # `graft.shared.schema` always passes one; a bare `alembic` run gets GRAFT_DATABASE_URL's
    from graft.shared.config import get_config
    from graft.shared.db import get_engine

    with get_engine(get_config().database_url).begin() as connection:
        context.configure(connection=connection, **OPTIONS)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()
