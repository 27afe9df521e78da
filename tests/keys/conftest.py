"""Fixtures for the key tests: the key tables, a keyring, users to give keys to."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.audit.service import SYSTEM
from fleetkeep.db import Base, make_sessionmaker
from fleetkeep.identity import service as identity
from fleetkeep.keys.hub import ConnectorHub
from fleetkeep.keys.models import ConnectorSession, ConnectorToken, KeyVersion, WrappedKey
from fleetkeep.keys.service import Keyring
from fleetkeep.settings import Settings

KEY_TABLES = [
    KeyVersion.__table__,
    WrappedKey.__table__,
    ConnectorToken.__table__,
    ConnectorSession.__table__,
]


def ensure_key_tables(engine: Engine) -> None:
    """Until the initial migration is regenerated with the key tables, create them here."""
    existing = set(inspect(engine).get_table_names())
    missing = [t for t in KEY_TABLES if t.name not in existing]
    if missing:
        Base.metadata.create_all(engine, tables=missing)  # type: ignore[arg-type]


@pytest.fixture
def factory(clean_engine: Engine) -> sessionmaker[Session]:
    ensure_key_tables(clean_engine)
    return make_sessionmaker(clean_engine)


@pytest.fixture
def key_settings(settings: Settings) -> Settings:
    return settings


@pytest.fixture
def keyring(key_settings: Settings, factory: sessionmaker[Session]) -> Keyring:
    return Keyring(key_settings, factory, ConnectorHub())


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


def key_file_of(settings: Settings) -> Path:
    return settings.resolved_key_file
