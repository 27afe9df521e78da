"""A real slapd for the directory tests (one per session), and small helpers around it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.audit.service import SYSTEM, Actor
from fleetkeep.db import make_sessionmaker, transaction
from fleetkeep.directories import service
from fleetkeep.directories.models import Directory, DirectoryKind
from fleetkeep.identity.models import User
from fleetkeep.identity.service import create_profile, create_region
from tests.support.slapd import AD_BASE, SYNC_PASSWORD, Slapd, start_slapd

ACTOR = Actor("admin:test@example.com")


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = start_slapd(tmp_path_factory.mktemp("slapd"))
    yield server
    server.stop()


@pytest.fixture
def factory(clean_engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(clean_engine)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def places(factory: sessionmaker[Session]) -> dict[str, int]:
    """Profiles Staff / Engineering / Sales and one storage region."""
    with transaction(factory) as session:
        ids = {
            name: create_profile(session, SYSTEM, name=name).id
            for name in ("Staff", "Engineering", "Sales")
        }
        ids["region"] = create_region(session, SYSTEM, name="local", store_url="file:///srv/fk").id
    return ids


def make_directory(
    factory: sessionmaker[Session],
    data_dir: Path,
    slapd: Slapd,
    base: str,
    *,
    kind: DirectoryKind = DirectoryKind.AD,
    password: str = SYNC_PASSWORD,
    mappings: list[dict[str, Any]] = (),  # type: ignore[assignment]
    settings: dict[str, Any] | None = None,
    **fields: Any,
) -> int:
    suffix = AD_BASE if base.endswith(AD_BASE) else "dc=example,dc=org"
    config = {
        "hosts": [f"127.0.0.1:{slapd.port}"],
        "bind_dn": slapd.sync_dn(suffix),
        "base_dn": base,
        **(settings or {}),
    }
    with transaction(factory) as session:
        directory = service.create_directory(
            session,
            ACTOR,
            data_dir,
            name=f"dir-{base.split(',')[0]}",
            kind=kind,
            secret=password,
            settings=config,
            hold_above_percent=fields.pop("hold_above_percent", 100.0),
            **fields,
        )
        for mapping in mappings:
            service.create_mapping(session, ACTOR, directory.id, **mapping)
        return directory.id


def users_by_name(factory: sessionmaker[Session]) -> dict[str, User]:
    with factory() as session:
        return {u.username: u for u in session.scalars(select(User))}


def get_directory(factory: sessionmaker[Session], directory_id: int) -> Directory:
    with factory() as session:
        return session.get_one(Directory, directory_id)


@pytest.fixture
def api(owner: TestClient) -> TestClient:
    return owner
