"""Readiness tells a load balancer the truth: database reachable and migrations current."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import text

from fleetkeep.db import code_head, make_engine
from fleetkeep.settings import Settings
from fleetkeep.web.app import create_app


def test_readyz_reports_the_current_migration(client: TestClient) -> None:
    answer = client.get("/readyz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "database": "ok", "migrations": code_head()}
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_is_503_until_the_database_is_migrated(settings: Settings, tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with TestClient(create_app(settings, engine=engine)) as client:
        answer = client.get("/readyz")
        assert answer.status_code == 503
        assert answer.json()["migrations"] == f"at None, code expects {code_head()}"
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
            conn.execute(text("INSERT INTO alembic_version VALUES ('0000_older')"))
        answer = client.get("/readyz")
        assert answer.status_code == 503
        assert "at 0000_older" in answer.json()["migrations"]
    engine.dispose()


def test_readyz_is_503_when_the_database_is_unreachable(settings: Settings) -> None:
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with TestClient(create_app(settings, engine=engine)) as client:
        answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["database"].startswith("unreachable: ")
