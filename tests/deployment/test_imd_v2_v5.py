"""IMD v2 (Active Directory: username + domain, optional password bind) and IMD v5 (UPN), against
a real slapd whose users reach activation through a deployment mapping's cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from fleetkeep.audit.service import Actor
from fleetkeep.db import make_sessionmaker, transaction
from fleetkeep.directories import service as directories
from fleetkeep.directories.models import DirectoryKind
from fleetkeep.identity.models import QuotaUnit
from tests.deployment.conftest import Org
from tests.support.servers import free_port
from tests.support.slapd import AD_BASE, SYNC_PASSWORD, Slapd, start_slapd

ACTOR = Actor("admin:test@example.com")


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = start_slapd(tmp_path_factory.mktemp("slapd"))
    yield server
    server.stop()


@pytest.fixture
def directory(org: Org, slapd: Slapd, clean_engine: Engine, tmp_path: Path) -> int:
    """An AD directory whose whole OU may deploy (profile Laptops, 25 GB), synced once."""
    ou = slapd.new_ou(AD_BASE)
    for sam in ("ann", "bob", "carl"):
        dn = slapd.add_ad_user(ou, sam, display_name=sam.title() + " Example")
        slapd.modify(dn, {"userPassword": [f"{sam}-password"]})
    factory = make_sessionmaker(clean_engine)
    data_dir = tmp_path / "data"
    with transaction(factory) as session:
        created = directories.create_directory(
            session,
            ACTOR,
            data_dir,
            name="corp",
            kind=DirectoryKind.AD,
            secret=SYNC_PASSWORD,
            settings={
                "hosts": [f"127.0.0.1:{slapd.port}"],
                "bind_dn": slapd.sync_dn(AD_BASE),
                "base_dn": ou,
            },
        )
        directories.create_mapping(
            session,
            ACTOR,
            created.id,
            purpose="deployment",
            rule={"type": "all"},
            profile_id=org.profile_id,
            storage_region_id=org.region_id,
            quota_value=25,
            quota_unit=QuotaUnit.GB,
        )
        directory_id = created.id
    run = directories.sync_directory(factory, ACTOR, data_dir, directory_id)
    assert run.status == "succeeded", run.error
    return directory_id


def test_first_ad_activation_creates_the_user_with_the_mapping_profile_and_quota(
    org: Org, directory: int
) -> None:
    assert org.client.get("/api/v1/users", params={"q": "ann"}).json()["items"] == []
    got = org.activate(username="ann", domain="corp.example", hostname="ANN-PC")
    assert got["mode"] == "imd-v2"
    [ann] = org.client.get("/api/v1/users", params={"q": "ann@"}).json()["items"]
    assert ann["email"] == "ann@corp.example"
    assert ann["profile_id"] == org.profile_id
    assert ann["quota"] == {"value": 25, "unit": "GB"}
    assert ann["source"] == f"directory:{directory}"
    # The second device of the same user finds the account instead of creating another.
    again = org.activate(username="ANN", domain="CORP.EXAMPLE", hostname="ANN-LAPTOP")
    assert again["config"]["user"]["id"] == ann["id"]


def test_a_given_password_is_checked_by_a_bind_as_the_user(org: Org, directory: int) -> None:
    wrong = org.activate(
        401, username="bob", domain="corp.example", password="guess", hostname="BOB-PC"
    )
    assert wrong["code"] == "password_rejected"
    assert org.devices() == []
    got = org.activate(
        username="bob", domain="corp.example", password="bob-password", hostname="BOB-PC"
    )
    assert got["config"]["user"]["email"] == "bob@corp.example"


def test_a_directory_that_cannot_be_reached_is_its_own_refusal(
    org: Org, directory: int, clean_engine: Engine, tmp_path: Path
) -> None:
    with transaction(make_sessionmaker(clean_engine)) as session:
        directories.update_directory(
            session,
            ACTOR,
            tmp_path / "data",
            directory,
            settings={
                "hosts": [f"127.0.0.1:{free_port()}"],
                "bind_dn": "cn=sync," + AD_BASE,
                "base_dn": AD_BASE,
            },
        )
    body = org.activate(
        503, username="bob", domain="corp.example", password="bob-password", hostname="B"
    )
    assert body["code"] == "directory_unreachable"
    # Without a password the cache alone decides: activation still works during the outage.
    assert org.activate(username="bob", domain="corp.example", hostname="B")["mode"] == "imd-v2"


def test_unknown_accounts_and_entra_upns(org: Org, directory: int) -> None:
    body = org.activate(404, username="mallory", domain="corp.example", hostname="M")
    assert body["code"] == "user_not_found"
    assert "deployment mapping" in body["detail"]
    got = org.activate(upn="Carl@corp.example", hostname="CARL-PC")
    assert got["mode"] == "imd-v5"
    assert got["config"]["user"]["email"] == "carl@corp.example"
    explained = org.client.get(
        "/api/v1/devices/explain", params={"upn": "carl@corp.example", "hostname": "CARL-PC"}
    ).json()
    assert explained["outcome"] == "reactivate"
