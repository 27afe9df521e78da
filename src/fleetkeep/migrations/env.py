"""Alembic environment: the engine (or connection) is handed in by ``fleetkeep.db``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

import fleetkeep.models  # noqa: F401  (registers every table on Base.metadata)
from fleetkeep.db import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    engine = config.attributes["engine"]
    with engine.begin() as conn:
        _run_with(conn)


def _run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
