"""A replica outlives a PostgreSQL restart: pooled connections the server ended are replaced
before a request uses them (without a ping round trip per checkout)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, text

from fleetkeep.db import make_engine
from tests.conftest import PG_ADMIN_URL


def test_pooled_connections_ended_by_the_server_are_replaced_before_use(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no server to restart")
    engine = make_engine(database_url)
    try:
        # Three connections in the pool, as a replica has after some traffic.
        held = [engine.connect() for _ in range(3)]
        pids = {c.execute(text("SELECT pg_backend_pid()")).scalar_one() for c in held}
        for conn in held:
            conn.close()
        # What a restart does to every session: terminate it (notice, then the socket closes).
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for pid in pids:
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            deadline = time.monotonic() + 10
            while (
                time.monotonic() < deadline
                and conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids)"),
                    {"pids": list(pids)},
                ).scalar_one()
            ):
                time.sleep(0.05)
        admin.dispose()

        again = [engine.connect() for _ in range(3)]
        new_pids = {c.execute(text("SELECT pg_backend_pid()")).scalar_one() for c in again}
        for conn in again:
            conn.close()
        assert not new_pids & pids
    finally:
        engine.dispose()
