"""Syncing from a real slapd: an AD-like tree (memberOf overlay) and a plain OpenLDAP tree."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.audit.models import AuditEvent
from fleetkeep.db import transaction
from fleetkeep.directories import service
from fleetkeep.directories.models import DirectoryKind, SyncStatus
from fleetkeep.identity.models import User, UserState
from fleetkeep.identity.service import change_state
from tests.directories.conftest import ACTOR, make_directory, users_by_name
from tests.support.slapd import LDAP_BASE, Slapd, start_slapd


def sync(factory: sessionmaker[Session], data_dir: Path, directory_id: int, **kw: object):  # type: ignore[no-untyped-def]
    return service.sync_directory(factory, ACTOR, data_dir, directory_id, **kw)  # type: ignore[arg-type]


def test_nested_groups_and_mapping_priority_decide_the_profile(
    slapd: Slapd, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    ou = slapd.new_ou()
    people = slapd.new_ou(ou, "people")
    groups = slapd.new_ou(ou, "groups")
    ann = slapd.add_ad_user(people, "ann")
    bob = slapd.add_ad_user(people, "bob")
    slapd.add_ad_user(people, "cyd")
    backend = slapd.add_ad_group(groups, "backend", [ann])
    slapd.add_ad_group(groups, "engineering", [backend])
    slapd.add_ad_group(groups, "sales", [bob, ann])
    region = places["region"]
    directory_id = make_directory(
        factory,
        data_dir,
        slapd,
        ou,
        mappings=[
            {  # ann is in both; the lower priority number wins
                "rule": {"type": "group", "group": "engineering"},
                "profile_id": places["Engineering"],
                "storage_region_id": region,
                "priority": 10,
            },
            {
                "rule": {"type": "group", "group": f"cn=sales,{groups}"},
                "profile_id": places["Sales"],
                "storage_region_id": region,
                "priority": 20,
            },
            {
                "rule": {"type": "ou", "ou": people, "subtree": False},
                "profile_id": places["Staff"],
                "storage_region_id": region,
                "priority": 30,
            },
        ],
    )
    run = sync(factory, data_dir, directory_id)
    assert run.status is SyncStatus.SUCCEEDED, run.error
    assert (run.seen, run.created) == (3, 3)
    got = users_by_name(factory)
    assert got["ann"].profile_id == places["Engineering"]
    assert got["bob"].profile_id == places["Sales"]
    assert got["cyd"].profile_id == places["Staff"]
    assert got["ann"].email == "ann@corp.example"
    assert got["ann"].upn == "ann@corp.example"
    assert got["ann"].dn == ann
    assert got["ann"].source == f"directory:{directory_id}"
    assert len(got["ann"].external_id or "") == 36  # objectGUID shown as a GUID


def test_ou_moves_renames_and_mail_changes_follow_the_directory(
    slapd: Slapd, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    ou = slapd.new_ou()
    staff = slapd.new_ou(ou, "staff")
    sales = slapd.new_ou(ou, "sales")
    dan = slapd.add_ad_user(staff, "dan", display_name="Dan Old")
    region = places["region"]
    directory_id = make_directory(
        factory,
        data_dir,
        slapd,
        ou,
        mappings=[
            {
                "rule": {"type": "ou", "ou": sales},
                "profile_id": places["Sales"],
                "storage_region_id": region,
                "priority": 1,
            },
            {
                "rule": {"type": "all"},
                "profile_id": places["Staff"],
                "storage_region_id": region,
                "priority": 2,
            },
        ],
    )
    assert sync(factory, data_dir, directory_id).created == 1
    before = users_by_name(factory)["dan"]
    slapd.modify(
        dan,
        {"displayName": ["Dän Nëw"], "mail": ["dan.new@corp.example"], "sAMAccountName": ["dnew"]},
    )
    slapd.rename(dan, "cn=dan", sales)
    run = sync(factory, data_dir, directory_id)
    assert (run.created, run.updated, run.preserved) == (0, 1, 0)
    after = users_by_name(factory)["dnew"]
    assert after.id == before.id
    assert after.display_name == "Dän Nëw"
    assert after.email == "dan.new@corp.example"
    assert after.dn == f"cn=dan,{sales}"
    assert after.profile_id == places["Sales"]


def test_disabled_users_are_preserved_and_only_sync_preserved_users_come_back(
    slapd: Slapd, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    ou = slapd.new_ou()
    eve = slapd.add_ad_user(ou, "eve")
    fay = slapd.add_ad_user(ou, "fay")
    directory_id = make_directory(
        factory,
        data_dir,
        slapd,
        ou,
        mappings=[
            {
                "rule": {"type": "all"},
                "profile_id": places["Staff"],
                "storage_region_id": places["region"],
            }
        ],
    )
    sync(factory, data_dir, directory_id)
    with factory() as session:
        fay_user = session.scalars(select(User).where(User.username == "fay")).one()
        change_state(session, ACTOR, fay_user, UserState.PRESERVED, by="admin")
        session.commit()
    slapd.modify(eve, {"userAccountControl": ["514"]})
    run = sync(factory, data_dir, directory_id)
    assert run.preserved == 1
    got = users_by_name(factory)
    assert (got["eve"].state, got["eve"].preserved_by) == (
        UserState.PRESERVED,
        f"directory:{directory_id}",
    )
    slapd.modify(eve, {"userAccountControl": ["512"]})
    slapd.modify(fay, {"displayName": ["Fay Again"]})
    run = sync(factory, data_dir, directory_id)
    assert run.reactivated == 1
    got = users_by_name(factory)
    assert got["eve"].state is UserState.ACTIVE
    assert got["fay"].state is UserState.PRESERVED
    assert got["fay"].preserved_by == "admin"
    skipped = {c["dn"]: c["reason"] for c in run.report["changes"] if c["action"] == "skip"}
    assert skipped[fay] == "preserved_by:admin"


def test_vanished_users_are_preserved_never_deleted(
    slapd: Slapd, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    ou = slapd.new_ou()
    gus = slapd.add_ad_user(ou, "gus")
    slapd.add_ad_user(ou, "hal")
    directory_id = make_directory(
        factory,
        data_dir,
        slapd,
        ou,
        mappings=[
            {
                "rule": {"type": "all"},
                "profile_id": places["Staff"],
                "storage_region_id": places["region"],
            }
        ],
    )
    sync(factory, data_dir, directory_id)
    slapd.delete(gus)
    run = sync(factory, data_dir, directory_id)
    assert run.preserved == 1
    got = users_by_name(factory)
    assert got["gus"].state is UserState.PRESERVED
    assert got["hal"].state is UserState.ACTIVE


def test_users_without_email_duplicates_and_multi_valued_mail_are_reported(
    slapd: Slapd, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    ou = slapd.new_ou()
    slapd.add_ad_user(ou, "ida", mail=None)
    slapd.add_ad_user(ou, "jon", mail="shared@corp.example")
    slapd.add_ad_user(ou, "kim", mail="shared@corp.example")
    slapd.add_ad_user(ou, "lou", mail=["lou.alias@corp.example", "lou@corp.example"])
    directory_id = make_directory(
        factory,
        data_dir,
        slapd,
        ou,
        mappings=[
            {
                "rule": {"type": "all"},
                "profile_id": places["Staff"],
                "storage_region_id": places["region"],
            }
        ],
    )
    run = sync(factory, data_dir, directory_id)
    assert run.status is SyncStatus.SUCCEEDED
    assert (run.created, run.skipped) == (2, 2)
    reasons = sorted(
        c["reason"].split(":")[0] for c in run.report["changes"] if c["action"] == "skip"
    )
    assert reasons == ["duplicate_email", "no_email"]
    got = users_by_name(factory)
    assert got["lou"].email == "lou@corp.example"  # the address equal to the UPN
    assert "ida" not in got


def test_a_user_matching_no_mapping_is_preserved_and_comes_back_when_it_matches_again(
    slapd: Slapd, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    ou = slapd.new_ou()
    mo = slapd.add_ad_user(ou, "mo", department="Sales")
    directory_id = make_directory(
        factory,
        data_dir,
        slapd,
        ou,
        mappings=[
            {
                "rule": {"type": "filter", "filter": "(department=sales)"},
                "profile_id": places["Sales"],
                "storage_region_id": places["region"],
            }
        ],
    )
    assert sync(factory, data_dir, directory_id).created == 1
    slapd.modify(mo, {"department": ["Legal"]})
    assert sync(factory, data_dir, directory_id).preserved == 1
    slapd.modify(mo, {"department": ["Sales"]})
    assert sync(factory, data_dir, directory_id).reactivated == 1


def test_openldap_tree_with_member_uniquemember_and_memberuid_groups(
    slapd: Slapd, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    ou = slapd.new_ou(LDAP_BASE)
    dns = {}
    for uid in ("nan", "oli", "pat", "quin"):
        dns[uid] = f"uid={uid},{ou}"
        slapd.add(
            dns[uid],
            {
                "objectClass": ["inetOrgPerson"],
                "uid": [uid],
                "cn": [uid.title()],
                "sn": [uid],
                "mail": [f"{uid}@example.org"],
            },
        )
    slapd.add(
        f"cn=devs,{ou}", {"objectClass": ["groupOfNames"], "cn": ["devs"], "member": [dns["nan"]]}
    )
    slapd.add(
        f"cn=all-devs,{ou}",
        {"objectClass": ["groupOfNames"], "cn": ["all-devs"], "member": [f"cn=devs,{ou}"]},
    )
    slapd.add(
        f"cn=ops,{ou}",
        {"objectClass": ["groupOfUniqueNames"], "cn": ["ops"], "uniqueMember": [dns["oli"]]},
    )
    slapd.add(
        f"cn=posix,{ou}",
        {
            "objectClass": ["posixGroup"],
            "cn": ["posix"],
            "gidNumber": ["5000"],
            "memberUid": ["pat"],
        },
    )
    region = places["region"]
    directory_id = make_directory(
        factory,
        data_dir,
        slapd,
        ou,
        kind=DirectoryKind.LDAP,
        mappings=[
            {
                "rule": {"type": "group", "group": f"cn=all-devs,{ou}"},
                "profile_id": places["Engineering"],
                "storage_region_id": region,
                "priority": 1,
            },
            {
                "rule": {
                    "type": "attribute",
                    "match": "any",
                    "conditions": [
                        {"attribute": "uid", "op": "equals", "value": "OLI"},
                        {"attribute": "uid", "op": "equals", "value": "pat"},
                    ],
                },
                "profile_id": places["Sales"],
                "storage_region_id": region,
                "priority": 2,
            },
        ],
    )
    run = sync(factory, data_dir, directory_id)
    assert run.status is SyncStatus.SUCCEEDED, run.error
    got = users_by_name(factory)
    assert got["nan"].profile_id == places["Engineering"]
    assert got["oli"].profile_id == places["Sales"]
    assert got["pat"].profile_id == places["Sales"]
    assert "quin" not in got
    assert len(got["nan"].external_id or "") == 36  # entryUUID
    assert run.report["counts"]["out_of_scope"] == 1


def test_dry_run_changes_nothing(
    slapd: Slapd, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    ou = slapd.new_ou()
    slapd.add_ad_user(ou, "ray")
    directory_id = make_directory(
        factory,
        data_dir,
        slapd,
        ou,
        mappings=[
            {
                "rule": {"type": "all"},
                "profile_id": places["Staff"],
                "storage_region_id": places["region"],
            }
        ],
    )
    run = sync(factory, data_dir, directory_id, dry_run=True)
    assert run.status is SyncStatus.DRY_RUN
    assert run.created == 1
    assert run.report["changes"][0]["action"] == "create"
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(User)) == 0
        assert (
            session.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.target_type == "user")
            )
            == 0
        )


@pytest.fixture
def own_slapd(tmp_path: Path) -> Iterator[Slapd]:
    """A slapd of the test's own, to take away (killed, or stopped with SIGSTOP)."""
    server = start_slapd(tmp_path / "own-slapd")
    yield server
    if server.process is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


def wait_until_stopped(pid: int, timeout: float = 5.0) -> None:
    """Until every thread of ``pid`` is in the stopped state (``T`` in /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = {
            Path(task, "stat").read_text().rpartition(")")[2].split()[0]
            for task in Path(f"/proc/{pid}/task").iterdir()
        }
        if states == {"T"}:
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not stop within {timeout} s")


def twelve_users_synced(
    slapd: Slapd, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> tuple[str, int]:
    """An OU of 12 users synced once in pages of 3, then one of them deleted (a complete
    fetch would preserve it): (OU, directory id)."""
    ou = slapd.new_ou()
    for i in range(12):
        slapd.add_ad_user(ou, f"user{i:02d}")
    directory_id = make_directory(
        factory,
        data_dir,
        slapd,
        ou,
        settings={"page_size": 3},
        mappings=[
            {
                "rule": {"type": "all"},
                "profile_id": places["Staff"],
                "storage_region_id": places["region"],
            }
        ],
    )
    assert sync(factory, data_dir, directory_id).created == 12
    slapd.delete(f"cn=user00,{ou}")
    return ou, directory_id


def test_a_directory_that_goes_down_mid_fetch_changes_nothing(
    own_slapd: Slapd, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    _ou, directory_id = twelve_users_synced(own_slapd, factory, data_dir, places)

    def kill_after_first_page(what: str, count: int) -> None:
        if what == "users" and count >= 3:
            own_slapd.kill()

    run = sync(factory, data_dir, directory_id, progress=kill_after_first_page)
    assert run.status is SyncStatus.FAILED
    assert "went away" in (run.error or "")
    got = users_by_name(factory)
    assert all(u.state is UserState.ACTIVE for u in got.values())
    with factory() as session:
        from fleetkeep.alerts.models import Alert

        alert = session.scalars(select(Alert)).one()
        assert alert.type == "directory.sync_failed"
    own_slapd.start()
    run = sync(factory, data_dir, directory_id)
    assert (run.status, run.preserved) == (SyncStatus.SUCCEEDED, 1)
    with factory() as session:
        from fleetkeep.alerts.models import Alert, AlertStatus

        assert session.scalars(select(Alert)).one().status is AlertStatus.RESOLVED


def test_a_directory_that_stops_answering_times_out_and_changes_nothing(
    own_slapd: Slapd, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    _ou, directory_id = twelve_users_synced(own_slapd, factory, data_dir, places)
    with transaction(factory) as session:
        service.update_directory(
            session, ACTOR, data_dir, directory_id, settings={"timeout_seconds": 1}
        )

    def freeze_after_first_page(what: str, count: int) -> None:
        if what == "users" and count >= 3 and own_slapd.process is not None:
            os.kill(own_slapd.process.pid, signal.SIGSTOP)
            # The stop takes effect when slapd's threads next run: wait for it, or on a busy
            # machine slapd could still answer the next pages and the sync would complete.
            wait_until_stopped(own_slapd.process.pid)

    run = sync(factory, data_dir, directory_id, progress=freeze_after_first_page)
    assert run.status is SyncStatus.FAILED
    assert "did not answer within 1 s" in (run.error or "")
    assert {u.state for u in users_by_name(factory).values()} == {UserState.ACTIVE}


def test_the_scheduled_job_syncs_directories_whose_interval_has_elapsed(
    slapd: Slapd, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    from fleetkeep.directories.jobs import directory_jobs
    from fleetkeep.directories.models import SyncRun
    from fleetkeep.settings import Settings

    ou = slapd.new_ou()
    slapd.add_ad_user(ou, "sched")
    directory_id = make_directory(
        factory,
        data_dir,
        slapd,
        ou,
        sync_interval_hours=1.0,
        mappings=[
            {
                "rule": {"type": "all"},
                "profile_id": places["Staff"],
                "storage_region_id": places["region"],
            }
        ],
    )
    [job] = directory_jobs(Settings(data_dir=data_dir))
    assert job.name == "directory-sync"
    job.run(factory)
    job.run(factory)  # within the interval: nothing to do
    with factory() as session:
        runs = session.scalars(select(SyncRun).where(SyncRun.directory_id == directory_id)).all()
    assert [(r.trigger, r.status) for r in runs] == [("schedule", SyncStatus.SUCCEEDED)]
    assert "sched" in users_by_name(factory)
