"""Fixtures for the vault: the key tests' keyring, and a user whose region is a filesystem store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from fleetkeep.audit.service import SYSTEM
from fleetkeep.identity import service as identity
from fleetkeep.identity.models import User
from tests.conftest import create_pg_database, drop_pg_database
from tests.keys.conftest import factory, keyring, session
from tests.support.servers import ServerProcess, start_server

__all__ = ["factory", "keyring", "session"]  # fixtures shared with the key tests


@pytest.fixture
def blobs(tmp_path: Path) -> Path:
    return tmp_path / "blobs"


def make_user(
    session: Session, blobs: Path, email: str = "ann@example.com", **profile: object
) -> User:
    prof = identity.create_profile(session, SYSTEM, name=f"p-{email}", **profile)
    region = identity.create_region(session, SYSTEM, name=f"r-{email}", store_url=f"file://{blobs}")
    user = identity.create_user(
        session, SYSTEM, email=email, profile_id=prof.id, storage_region_id=region.id
    )
    session.commit()
    return user


@pytest.fixture
def user(session: Session, blobs: Path) -> User:
    return make_user(session, blobs)


@pytest.fixture(scope="module")
def shared_server(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One ``fleetkeep serve`` for a whole module (each test uses its own users and names):
    starting a server is the slowest part of these tests."""
    base = tmp_path_factory.mktemp("shared-server")
    url = (
        f"sqlite:///{base / 'fleetkeep.db'}"
        if database_url.startswith("sqlite")
        else create_pg_database("fk_shared")
    )
    proc = start_server(base, url)
    yield proc
    proc.stop()
    if not url.startswith("sqlite"):
        drop_pg_database(url)
