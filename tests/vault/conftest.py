"""Fixtures for the vault: a keyring, and a user whose region is a filesystem store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.audit.service import SYSTEM
from fleetkeep.db import make_sessionmaker
from fleetkeep.identity import service as identity
from fleetkeep.identity.models import User
from fleetkeep.keys.hub import ConnectorHub
from fleetkeep.keys.service import Keyring
from fleetkeep.settings import Settings


@pytest.fixture
def factory(clean_engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(clean_engine)


@pytest.fixture
def keyring(settings: Settings, factory: sessionmaker[Session]) -> Keyring:
    return Keyring(settings, factory, ConnectorHub())


@pytest.fixture
def session(factory: sessionmaker[Session]) -> Iterator[Session]:
    with factory() as s:
        yield s
        s.rollback()


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
