"""Fixtures for the key tests: a keyring with its own hub, and users to give keys to."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.audit.service import SYSTEM
from fleetkeep.db import make_sessionmaker
from fleetkeep.identity import service as identity
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


def make_users(session: Session, count: int, prefix: str = "u") -> list[int]:
    profile = identity.create_profile(session, SYSTEM, name=f"{prefix}-profile")
    region = identity.create_region(
        session, SYSTEM, name=f"{prefix}-region", store_url="file:///tmp/fleetkeep-keys-test"
    )
    ids = [
        identity.create_user(
            session,
            SYSTEM,
            email=f"{prefix}{i}@example.com",
            profile_id=profile.id,
            storage_region_id=region.id,
        ).id
        for i in range(count)
    ]
    session.commit()
    return ids


@pytest.fixture
def users(session: Session) -> list[int]:
    return make_users(session, 5)
