"""Fixtures shared by the whole suite: databases on both back ends, apps and server processes.

Every test that asks for ``database_url`` (directly or through ``db``, ``client`` …) runs twice,
on SQLite and on PostgreSQL. PostgreSQL databases are created per test session (and per xdist
worker) and dropped at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from fleetkeep.db import Base, make_engine, make_sessionmaker, upgrade
from fleetkeep.settings import Settings
from fleetkeep.web.app import create_app
from tests.support.servers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    ServerProcess,
    free_port,
    start_server,
)

PG_ADMIN_URL = os.environ.get(
    "FLEETKEEP_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ["sqlite", "postgresql"]


def create_pg_database(prefix: str = "fk_test") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "fleetkeep.db"
        yield f"sqlite:///{path}"
    else:
        url = create_pg_database()
        yield url
        drop_pg_database(url)


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    upgrade(eng)
    yield eng
    eng.dispose()


def _wipe(eng: Engine) -> None:
    with eng.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture
def clean_engine(engine: Engine) -> Iterator[Engine]:
    """The migrated engine, emptied after the test."""
    yield engine
    _wipe(engine)


@pytest.fixture
def db(clean_engine: Engine) -> Iterator[Session]:
    session = make_sessionmaker(clean_engine)()
    yield session
    session.rollback()
    session.close()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        login_lockout_seconds=60,
        login_max_failures=5,
    )


@pytest.fixture
def client(settings: Settings, clean_engine: Engine) -> Iterator[TestClient]:
    app = create_app(settings, engine=clean_engine)
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def owner_token(client: TestClient, clean_engine: Engine) -> str:
    """Signs in the owner made by ``fleetkeep init`` semantics and returns a session token."""
    from fleetkeep.admins.models import Role
    from fleetkeep.admins.service import create_admin
    from fleetkeep.audit.service import SYSTEM
    from fleetkeep.db import transaction

    with transaction(make_sessionmaker(clean_engine)) as session:
        create_admin(session, SYSTEM, ADMIN_EMAIL, ADMIN_PASSWORD, Role.OWNER)
    response = client.post(
        "/api/v1/auth/sign-in", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


@pytest.fixture
def owner(client: TestClient, owner_token: str) -> TestClient:
    """The test client, authenticated as the owner."""
    client.headers["Authorization"] = f"Bearer {owner_token}"
    return client


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A real ``fleetkeep serve`` process on a free port, on a fresh database of the backend."""
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'server' / 'fleetkeep.db'}"
        proc = start_server(tmp_path / "server", url)
        yield proc
        proc.stop()
    else:
        url = create_pg_database("fk_srv")
        proc = start_server(tmp_path / "server", url)
        yield proc
        proc.stop()
        drop_pg_database(url)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server (S3, KMS …) on a loopback port, shared by the session's tests: each test
    makes its own bucket or key."""
    from moto.server import ThreadedMotoServer  # a heavy import only the AWS tests pay for

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    yield f"http://127.0.0.1:{port}"
    moto.stop()
