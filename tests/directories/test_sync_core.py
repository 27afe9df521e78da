"""The sync engine on its own (no directory server): plan and apply on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from fleetkeep.audit.models import AuditEvent
from fleetkeep.audit.service import SYSTEM, Actor
from fleetkeep.db import make_sessionmaker, transaction
from fleetkeep.directories.models import (
    Directory,
    DirectoryKind,
    Mapping,
    MappingPurpose,
    SyncStatus,
)
from fleetkeep.directories.sync import (
    Action,
    AmbiguousUser,
    FetchResult,
    SourceUser,
    apply_plan,
    confirm_sync,
    find_deployment_candidate,
    plan_sync,
    run_sync,
)
from fleetkeep.identity.models import User, UserState
from fleetkeep.identity.service import change_state, create_profile, create_region

ACTOR = Actor("test")


@pytest.fixture
def directory(db: Session) -> Directory:
    profile = create_profile(db, SYSTEM, name="Staff")
    region = create_region(db, SYSTEM, name="local", store_url="file:///srv/fk")
    other = create_profile(db, SYSTEM, name="Sales")
    directory = Directory(name="corp", kind=DirectoryKind.CSV, hold_above_percent=100.0)
    db.add(directory)
    db.flush()
    db.add_all(
        [
            Mapping(
                directory_id=directory.id,
                rule={"type": "group", "group": "cn=sales,ou=groups,dc=x"},
                profile_id=other.id,
                storage_region_id=region.id,
                priority=10,
            ),
            Mapping(
                directory_id=directory.id,
                rule={"type": "ou", "ou": "ou=people,dc=x"},
                profile_id=profile.id,
                storage_region_id=region.id,
                priority=20,
            ),
        ]
    )
    db.commit()
    return directory


def person(uid: str, **extra: object) -> SourceUser:
    fields: dict[str, object] = {
        "email": f"{uid}@example.com",
        "username": uid,
        "display_name": uid.title(),
        "dn": f"uid={uid},ou=people,dc=x",
    }
    fields.update(extra)
    return SourceUser(external_id=f"guid-{uid}", **fields)  # type: ignore[arg-type]


def sync(db: Session, directory: Directory, users: list[SourceUser], **kw: object) -> None:
    plan = plan_sync(db, directory, users, **kw)  # type: ignore[arg-type]
    apply_plan(db, ACTOR, plan)
    db.commit()


def users(db: Session) -> dict[str, User]:
    return {u.username: u for u in db.scalars(select(User))}


def test_first_sync_creates_users_with_the_first_matching_mapping(
    db: Session, directory: Directory
) -> None:
    sales = person("sam", groups={"CN=Sales, OU=Groups, DC=x"})
    sync(db, directory, [person("ann"), sales, person("out", dn="uid=out,ou=other,dc=x")])
    got = users(db)
    assert set(got) == {"ann", "sam"}
    assert got["sam"].profile.name == "Sales"
    assert got["ann"].profile.name == "Staff"
    assert got["ann"].source == directory.source
    assert got["ann"].external_id == "guid-ann"
    creates = db.scalar(
        select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "user.create")
    )
    assert creates == 2
    audited = db.scalars(
        select(AuditEvent).where(
            AuditEvent.action == "user.create", AuditEvent.target_id == str(got["ann"].id)
        )
    ).one()
    assert audited.actor == ACTOR.name
    assert audited.target_type == "user"
    assert audited.before is None
    assert audited.after == {
        "email": "ann@example.com",
        "username": "ann",
        "display_name": "Ann",
        "profile_id": got["ann"].profile_id,
        "storage_region_id": got["ann"].storage_region_id,
        "quota_value": got["ann"].quota_value,
        "quota_unit": str(got["ann"].quota_unit),
        "external_id": "guid-ann",
        "dn": "uid=ann,ou=people,dc=x",
        "upn": None,
        "source": directory.source,
        "state": "active",
    }


def test_nested_group_membership_is_resolved_on_our_side(db: Session, directory: Directory) -> None:
    nested = person("nia", dn="uid=nia,ou=elsewhere,dc=x", groups={"cn=emea,ou=groups,dc=x"})
    parents = {"cn=emea,ou=groups,dc=x": {"cn=Sales,ou=groups,dc=x"}}
    plan = plan_sync(db, directory, [nested], group_parents=parents)
    assert [c.action for c in plan.changes] == [Action.CREATE]


def test_vanished_and_disabled_users_are_preserved_and_only_sync_preserved_come_back(
    db: Session, directory: Directory
) -> None:
    sync(db, directory, [person("ann"), person("bob"), person("cat"), person("dan")])
    change_state(db, SYSTEM, users(db)["dan"], UserState.PRESERVED, by="admin")
    db.commit()
    sync(db, directory, [person("ann", disabled=True), person("cat"), person("dan")])
    got = users(db)
    assert got["ann"].state is UserState.PRESERVED
    assert got["ann"].preserved_by == directory.source
    assert got["bob"].state is UserState.PRESERVED
    assert got["cat"].state is UserState.ACTIVE
    sync(db, directory, [person("ann"), person("bob"), person("cat"), person("dan")])
    db.expire_all()
    got = users(db)
    assert got["ann"].state is UserState.ACTIVE
    assert got["bob"].state is UserState.ACTIVE
    assert got["dan"].state is UserState.PRESERVED
    assert got["dan"].preserved_by == "admin"


def test_users_without_email_and_duplicate_emails_are_skipped_with_reasons(
    db: Session, directory: Directory
) -> None:
    entries = [
        person("ann", email=None),
        person("bob", email="same@example.com"),
        person("abe", email="SAME@example.com"),
    ]
    plan = plan_sync(db, directory, entries)
    reasons = {c.external_id: (c.action, c.reason) for c in plan.changes}
    assert reasons["guid-ann"] == (Action.SKIP, "no_email")
    assert reasons["guid-abe"][0] is Action.CREATE
    assert reasons["guid-bob"][0] is Action.SKIP
    assert reasons["guid-bob"][1].startswith("duplicate_email")


def test_renames_and_email_swaps_follow_the_source(db: Session, directory: Directory) -> None:
    sync(db, directory, [person("ann"), person("bob")])
    swapped = [
        person("ann", email="bob@example.com", display_name="Ann B"),
        person("bob", email="ann@example.com"),
    ]
    sync(db, directory, swapped)
    db.expire_all()
    got = users(db)
    assert got["ann"].email == "bob@example.com"
    assert got["ann"].display_name == "Ann B"
    assert got["bob"].email == "ann@example.com"


def test_safety_threshold_holds_and_confirm_applies(
    clean_engine: Engine, db: Session, directory: Directory
) -> None:
    factory = make_sessionmaker(clean_engine)
    crew = [person(f"u{i}") for i in range(10)]
    run = run_sync(factory, ACTOR, directory.id, lambda: FetchResult(crew))
    assert run.status is SyncStatus.SUCCEEDED
    with transaction(factory) as session:
        session.get_one(Directory, directory.id).hold_above_percent = 10.0
    run = run_sync(factory, ACTOR, directory.id, lambda: FetchResult(crew[:5]))
    assert run.status is SyncStatus.HELD
    assert "5 of 10" in (run.held_reason or "")
    with transaction(factory) as session:
        active = session.scalar(
            select(func.count()).select_from(User).where(User.state == UserState.ACTIVE)
        )
        assert active == 10
    with transaction(factory) as session:
        confirmed = confirm_sync(session, ACTOR, run.id)
        assert confirmed.status is SyncStatus.CONFIRMED
    with transaction(factory) as session:
        active = session.scalar(
            select(func.count()).select_from(User).where(User.state == UserState.ACTIVE)
        )
        assert active == 5


def test_a_failed_fetch_changes_nothing_and_raises_an_alert(
    clean_engine: Engine, db: Session, directory: Directory
) -> None:
    factory = make_sessionmaker(clean_engine)
    run_sync(factory, ACTOR, directory.id, lambda: FetchResult([person("ann")]))

    def broken() -> FetchResult:
        raise TimeoutError("server went away")

    run = run_sync(factory, ACTOR, directory.id, broken)
    assert run.status is SyncStatus.FAILED
    assert "server went away" in (run.error or "")
    with transaction(factory) as session:
        assert session.scalar(select(User.state)) is UserState.ACTIVE
        from fleetkeep.alerts.models import Alert

        assert session.scalar(select(Alert.type)) == "directory.sync_failed"


def test_deployment_cache_lookup(db: Session, directory: Directory) -> None:
    mapping = db.scalar(select(Mapping).where(Mapping.priority == 20))
    assert mapping is not None
    db.add(
        Mapping(
            directory_id=directory.id,
            purpose=MappingPurpose.DEPLOYMENT,
            rule={"type": "all"},
            profile_id=mapping.profile_id,
            storage_region_id=mapping.storage_region_id,
        )
    )
    db.commit()
    ann = person("ann", upn="ann@corp.example", sam_account_name="ann", domain="corp.example")
    sync(db, directory, [ann, person("bob", domain="corp.example")])
    found = find_deployment_candidate(db, username="CORP.EXAMPLE\\Ann")
    assert found is not None
    assert found.external_id == "guid-ann"
    assert find_deployment_candidate(db, upn="ANN@corp.example") == found
    assert find_deployment_candidate(db, email="nobody@example.com") is None
    with pytest.raises(AmbiguousUser):
        find_deployment_candidate(db, email="ann@example.com", username="bob")
