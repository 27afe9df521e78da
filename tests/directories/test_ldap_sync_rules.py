"""The sync rules an admin switches or relies on, against a real slapd: auto-update,
auto-preserve, LDAP's disabled attribute, OU scope, AND of attribute conditions, deployment
mappings, a size limit that aborts the sync, and odd data (escaped and non-ASCII DNs,
10,000 members in one group)."""

from __future__ import annotations

import uuid
from pathlib import Path

import ldap
import ldap.modlist
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.db import transaction
from fleetkeep.directories import service
from fleetkeep.directories.mappings import normalize_dn
from fleetkeep.directories.models import DeploymentCacheEntry, DirectoryKind, SyncRun, SyncStatus
from fleetkeep.identity.models import UserState
from tests.directories.conftest import ACTOR, make_directory, users_by_name
from tests.support.slapd import AD_BASE, LDAP_BASE, Slapd


def sync(
    factory: sessionmaker[Session], data_dir: Path, directory_id: int, **kw: object
) -> SyncRun:
    return service.sync_directory(factory, ACTOR, data_dir, directory_id, **kw)  # type: ignore[arg-type]


def everyone(places: dict[str, int], profile: str = "Staff", **extra: object) -> dict[str, object]:
    return {
        "rule": {"type": "all"},
        "profile_id": places[profile],
        "storage_region_id": places["region"],
        **extra,
    }


def add_person(slapd: Slapd, parent: str, uid: str, **attrs: list[str]) -> str:
    dn = f"uid={uid},{parent}"
    slapd.add(
        dn,
        {
            "objectClass": ["inetOrgPerson"],
            "uid": [uid],
            "cn": [uid.title()],
            "sn": [uid],
            "mail": [f"{uid}@example.org"],
            **attrs,
        },
    )
    return dn


def test_with_auto_update_off_only_dn_and_upn_follow_the_directory(
    slapd: Slapd, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    ou = slapd.new_ou()
    sub = slapd.new_ou(ou, "moved")
    ada = slapd.add_ad_user(ou, "ada", display_name="Ada Old")
    directory_id = make_directory(
        factory, data_dir, slapd, ou, auto_update=False, mappings=[everyone(places)]
    )
    assert sync(factory, data_dir, directory_id).created == 1
    slapd.modify(ada, {"displayName": ["Ada New"], "mail": ["ada.new@corp.example"]})
    slapd.rename(ada, "cn=ada", sub)
    run = sync(factory, data_dir, directory_id)
    assert (run.updated, run.preserved) == (1, 0)
    got = users_by_name(factory)["ada"]
    assert (got.display_name, got.email) == ("Ada Old", "ada@corp.example")
    assert got.dn == f"cn=ada,{sub}"


def test_with_auto_preserve_off_vanished_and_unmapped_users_stay_active(
    slapd: Slapd, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    ou = slapd.new_ou()
    bea = slapd.add_ad_user(ou, "bea")
    slapd.add_ad_user(ou, "cal", department="Sales")
    directory_id = make_directory(
        factory,
        data_dir,
        slapd,
        ou,
        auto_preserve=False,
        mappings=[
            {
                "rule": {"type": "filter", "filter": "(|(cn=bea)(department=Sales))"},
                "profile_id": places["Staff"],
                "storage_region_id": places["region"],
            }
        ],
    )
    assert sync(factory, data_dir, directory_id).created == 2
    slapd.delete(bea)
    slapd.modify(f"cn=cal,{ou}", {"department": ["Legal"]})
    run = sync(factory, data_dir, directory_id)
    assert (run.status, run.preserved) == (SyncStatus.SUCCEEDED, 0)
    assert {u.state for u in users_by_name(factory).values()} == {UserState.ACTIVE}


def test_an_ldap_directory_disables_users_by_its_configured_attribute(
    slapd: Slapd, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    ou = slapd.new_ou(LDAP_BASE)
    dee = add_person(slapd, ou, "dee")
    add_person(slapd, ou, "eli", employeeType=["disabled"])
    directory_id = make_directory(
        factory,
        data_dir,
        slapd,
        ou,
        kind=DirectoryKind.LDAP,
        settings={"disabled_filter": "(employeeType=disabled)"},
        mappings=[everyone(places)],
    )
    run = sync(factory, data_dir, directory_id)
    assert (run.created, run.skipped) == (1, 1)
    assert [c["reason"] for c in run.report["changes"] if c["action"] == "skip"] == ["disabled"]
    slapd.modify(dee, {"employeeType": ["disabled"]})
    assert sync(factory, data_dir, directory_id).preserved == 1
    assert users_by_name(factory)["dee"].state is UserState.PRESERVED
    slapd.modify(dee, {"employeeType": None})
    assert sync(factory, data_dir, directory_id).reactivated == 1
    assert users_by_name(factory)["dee"].state is UserState.ACTIVE


def test_ou_rules_with_and_without_sub_ous_and_an_and_of_attribute_conditions(
    slapd: Slapd, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    ou = slapd.new_ou()
    people = slapd.new_ou(ou, "people")
    nested = slapd.new_ou(people, "contractors")
    slapd.add_ad_user(people, "fox", department="Sales")
    slapd.add_ad_user(nested, "gil", department="Sales")
    slapd.add_ad_user(ou, "hana", department="Sales")
    slapd.modify(f"cn=hana,{ou}", {"company": ["ACME"]})
    slapd.add_ad_user(ou, "ivo", department="Legal")
    slapd.modify(f"cn=ivo,{ou}", {"company": ["ACME"]})
    region = places["region"]
    directory_id = make_directory(
        factory,
        data_dir,
        slapd,
        ou,
        mappings=[
            {  # only direct children of people
                "rule": {"type": "ou", "ou": people, "subtree": False},
                "profile_id": places["Engineering"],
                "storage_region_id": region,
            },
            {  # the rest of the people subtree
                "rule": {"type": "ou", "ou": people, "subtree": True},
                "profile_id": places["Staff"],
                "storage_region_id": region,
            },
            {
                "rule": {
                    "type": "attribute",
                    "match": "all",
                    "conditions": [
                        {"attribute": "department", "op": "equals", "value": "sales"},
                        {"attribute": "company", "op": "starts_with", "value": "AC"},
                    ],
                },
                "profile_id": places["Sales"],
                "storage_region_id": region,
            },
        ],
    )
    run = sync(factory, data_dir, directory_id)
    assert run.status is SyncStatus.SUCCEEDED, run.error
    got = users_by_name(factory)
    assert got["fox"].profile_id == places["Engineering"]
    assert got["gil"].profile_id == places["Staff"]
    assert got["hana"].profile_id == places["Sales"]
    assert "ivo" not in got  # Legal: the AND fails
    assert run.report["counts"]["out_of_scope"] == 1


def test_a_deployment_mapping_caches_users_and_never_imports_them(
    slapd: Slapd, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    ou = slapd.new_ou()
    jo = slapd.add_ad_user(ou, "jo")
    slapd.add_ad_user(ou, "kai")
    slapd.add_ad_user(ou, "lea", disabled=True)
    directory_id = make_directory(
        factory, data_dir, slapd, ou, mappings=[everyone(places, purpose="deployment")]
    )

    def cached() -> dict[str, DeploymentCacheEntry]:
        with factory() as session:
            rows = session.scalars(
                select(DeploymentCacheEntry).where(
                    DeploymentCacheEntry.directory_id == directory_id
                )
            )
            return {r.sam_account_name: r for r in rows}

    dry = sync(factory, data_dir, directory_id, dry_run=True)
    assert dry.status is SyncStatus.DRY_RUN
    assert cached() == {}
    run = sync(factory, data_dir, directory_id)
    assert (run.status, run.created) == (SyncStatus.SUCCEEDED, 0)
    assert users_by_name(factory) == {}
    rows = cached()
    assert set(rows) == {"jo", "kai"}  # lea is disabled
    assert rows["jo"].email == "jo@corp.example"
    assert rows["jo"].upn == "jo@corp.example"
    assert rows["jo"].dn == jo
    assert rows["jo"].domain == "corp.example"
    assert len(rows["jo"].external_id) == 36
    slapd.delete(jo)
    sync(factory, data_dir, directory_id)
    assert set(cached()) == {"kai"}


def test_a_size_limit_aborts_the_sync_instead_of_preserving_the_unseen(
    slapd: Slapd, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    ou = slapd.new_ou()
    for i in range(5):
        slapd.add_ad_user(ou, f"s{i}")
    directory_id = make_directory(factory, data_dir, slapd, ou, mappings=[everyone(places)])
    assert sync(factory, data_dir, directory_id).created == 5
    with transaction(factory) as session:
        service.update_directory(
            session,
            ACTOR,
            data_dir,
            directory_id,
            # Seeded by tests.support.slapd; slapd returns at most 3 entries to it.
            settings={"bind_dn": f"cn=limited,{AD_BASE}"},
        )
    run = sync(factory, data_dir, directory_id)
    assert run.status is SyncStatus.FAILED
    assert "size limit" in (run.error or "")
    assert {u.state for u in users_by_name(factory).values()} == {UserState.ACTIVE}


def test_escaped_and_non_ascii_dns_match_groups_and_ous(
    slapd: Slapd, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    ou = slapd.new_ou(LDAP_BASE)
    team = slapd.new_ou(ou, "Équipe Nord")
    smith = f"cn=Smith\\, John,{team}"
    slapd.add(
        smith,
        {
            "objectClass": ["inetOrgPerson"],
            "cn": ["Smith, John"],
            "sn": ["Smith"],
            "uid": ["jsmith"],
            "mail": ["john.smith@example.org"],
        },
    )
    zoe = add_person(slapd, team, "zoë", cn=["Zoë Ünal"], mail=["zoe@example.org"])
    slapd.add(
        f"cn=Ventes & Co,{ou}",
        {
            "objectClass": ["groupOfNames"],
            "cn": ["Ventes & Co"],
            # Spacing and case differ from the entries' own DNs.
            "member": [smith.replace("cn=Smith\\, John,", "CN=smith\\, john , "), zoe.upper()],
        },
    )
    directory_id = make_directory(
        factory,
        data_dir,
        slapd,
        ou,
        kind=DirectoryKind.LDAP,
        mappings=[
            {
                "rule": {"type": "group", "group": "Ventes & Co"},
                "profile_id": places["Sales"],
                "storage_region_id": places["region"],
            },
            {
                "rule": {"type": "ou", "ou": team.upper()},
                "profile_id": places["Staff"],
                "storage_region_id": places["region"],
            },
        ],
    )
    run = sync(factory, data_dir, directory_id)
    assert run.status is SyncStatus.SUCCEEDED, run.error
    got = users_by_name(factory)
    assert got["jsmith"].profile_id == places["Sales"]
    assert got["jsmith"].display_name == "Smith, John"
    assert normalize_dn(got["jsmith"].dn or "") == normalize_dn(smith)
    assert got["zoë"].display_name == "Zoë Ünal"
    assert got["zoë"].profile_id == places["Sales"]
    assert normalize_dn(got["zoë"].dn or "") == normalize_dn(zoe)


BIG_GROUP = 10_000


@pytest.fixture(scope="module")
def big_group(slapd: Slapd) -> tuple[str, str]:
    """An OpenLDAP OU with 10,000 users, all in one group (made once per test process)."""
    ou = slapd.new_ou(LDAP_BASE)
    conn = slapd.connect(LDAP_BASE)
    try:
        members = []
        pending = []
        for i in range(BIG_GROUP):
            uid = f"m{i:05d}"
            dn = f"uid={uid},{ou}"
            attrs = {
                "objectClass": [b"inetOrgPerson"],
                "uid": [uid.encode()],
                "cn": [f"Member {i}".encode()],
                "sn": [b"Member"],
                "mail": [f"{uid}@example.org".encode()],
            }
            pending.append(conn.add_ext(dn, ldap.modlist.addModlist(attrs)))
            members.append(dn.encode())
            if len(pending) == 200:  # slapd drops a client with too many requests pending
                for msgid in pending:
                    conn.result(msgid)
                pending.clear()
        for msgid in pending:
            conn.result(msgid)
        group = f"cn=everyone-{uuid.uuid4().hex[:6]},{ou}"
        conn.add_s(
            group,
            ldap.modlist.addModlist(
                {"objectClass": [b"groupOfNames"], "cn": [group[3:16].encode()], "member": members}
            ),
        )
    finally:
        conn.unbind_s()
    return ou, group


def test_a_group_with_10000_members_syncs_whole(
    slapd: Slapd,
    big_group: tuple[str, str],
    factory: sessionmaker[Session],
    data_dir: Path,
    places: dict[str, int],
) -> None:
    ou, group = big_group
    directory_id = make_directory(
        factory,
        data_dir,
        slapd,
        ou,
        kind=DirectoryKind.LDAP,
        mappings=[
            {
                "rule": {"type": "group", "group": group},
                "profile_id": places["Engineering"],
                "storage_region_id": places["region"],
            }
        ],
    )
    run = sync(factory, data_dir, directory_id)
    assert run.status is SyncStatus.SUCCEEDED, run.error
    assert (run.seen, run.created) == (BIG_GROUP, BIG_GROUP)
    assert {u.profile_id for u in users_by_name(factory).values()} == {places["Engineering"]}
    assert sync(factory, data_dir, directory_id).updated == 0
