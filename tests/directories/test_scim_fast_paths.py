"""The SCIM fast paths give what the general paths (resource models, PATCH engine, ORM) give."""

from __future__ import annotations

import json
from typing import Any

import pytest
from scim2_models import Context
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleetkeep.audit.models import AuditEvent
from fleetkeep.audit.service import Actor
from fleetkeep.directories.scim import service
from fleetkeep.directories.scim.models import ScimUser
from fleetkeep.directories.scim.protocol import (
    UserResource,
    apply_patch,
    apply_simple_patch,
    parse_patch,
    parse_resource,
    simple_patch,
)
from fleetkeep.identity import service as identity
from fleetkeep.identity.models import User, UserState
from tests.directories.scim_support import ENTERPRISE, USER_SCHEMA, new_user, patch

BASE = "https://fk.example/scim/v2"
ACTOR = Actor("scim", request_id="r-1", source_ip="10.0.0.1")
SIMPLE = [
    patch({"op": "replace", "path": "title", "value": "Engineer II"}),
    patch({"op": "Replace", "path": "Title", "value": "  spaced  "}),
    patch({"op": "add", "path": f"{USER_SCHEMA}:locale", "value": "de-CH"}),
    patch({"op": "replace", "path": "title", "value": "Engineer"}),  # the value it has
    patch(
        {"op": "replace", "path": "nickName", "value": "K"},
        {"op": "Add", "path": "userType", "value": "Employee"},
        {"op": "replace", "path": "timezone", "value": "Europe/Zurich"},
        {"op": "replace", "path": "preferredLanguage", "value": "de"},
    ),
    patch(
        {"op": "replace", "path": "title", "value": "A"},
        {"op": "replace", "path": "title", "value": "Engineer"},
    ),
]


def rich_user(user_name: str) -> dict[str, Any]:
    body = new_user(
        user_name,
        schemas=[USER_SCHEMA, ENTERPRISE],
        displayName="Kim Lee",
        name={"givenName": "Kim", "familyName": "Lee"},
        title="Engineer",
        phoneNumbers=[{"value": "+1 555 0100", "type": "work"}],
    )
    body[ENTERPRISE] = {"department": "Ops"}
    return body


@pytest.mark.parametrize("body", SIMPLE)
def test_a_simple_patch_changes_the_attributes_as_the_engine_does(body: dict[str, Any]) -> None:
    resource = parse_resource(
        UserResource, rich_user("kim@example.com"), Context.RESOURCE_CREATION_REQUEST
    )
    attributes = resource.model_dump(scim_ctx=Context.DEFAULT)
    operations = simple_patch(body)
    assert operations is not None
    patched, changed = apply_simple_patch(attributes, operations)
    assert changed == apply_patch(resource, parse_patch(UserResource, body))
    assert patched == resource.model_dump(scim_ctx=Context.DEFAULT)


@pytest.mark.parametrize(
    "body",
    [
        patch({"op": "remove", "path": "title"}),
        patch({"op": "replace", "path": "displayName", "value": "X"}),
        patch({"op": "replace", "path": "title", "value": ""}),
        patch({"op": "replace", "path": "title", "value": "False"}),
        patch({"op": "replace", "path": "title", "value": 3}),
        patch({"op": "replace", "path": "title"}),
        patch({"op": "replace", "value": {"title": "X"}}),
        patch({"op": "replace", "path": f"{ENTERPRISE}:department", "value": "X"}),
        patch({"op": "replace", "path": "title", "value": "X", "extra": 1}),
        patch(*[{"op": "replace", "path": "title", "value": "X"}] * 101),
        patch(),
        {"schemas": ["urn:nope"], "Operations": [{"op": "add", "path": "title", "value": "X"}]},
        {**patch({"op": "add", "path": "title", "value": "X"}), "id": "1"},
    ],
)
def test_anything_else_takes_the_engine(body: dict[str, Any]) -> None:
    assert simple_patch(body) is None


@pytest.fixture
def scim_users(db: Session) -> tuple[int, int]:
    """Two SCIM users alike but for their names, under a catch-all mapping."""
    profile = identity.create_profile(db, ACTOR, name="Staff")
    region = identity.create_region(db, ACTOR, name="eu", store_url="file:///tmp/fk-eu")
    service.add_mapping(
        db, ACTOR, rule={"type": "all"}, profile_id=profile.id, storage_region_id=region.id
    )
    ids = []
    for name in ("kim@example.com", "lou@example.com"):
        resource = parse_resource(UserResource, rich_user(name), Context.RESOURCE_CREATION_REQUEST)
        ids.append(service.create_user(db, ACTOR, resource, BASE).user.id)
    db.commit()
    return ids[0], ids[1]


def _state(db: Session, user_id: int) -> tuple[dict[str, Any], int, list[tuple[Any, ...]]]:
    """The user's stored attributes, version and the audit events since it was set up (the
    PATCH's), with the user's own names, id and the times taken out."""
    db.expire_all()
    row = db.get(ScimUser, user_id)
    assert row is not None
    events = db.execute(
        select(
            AuditEvent.actor,
            AuditEvent.action,
            AuditEvent.target_type,
            AuditEvent.before,
            AuditEvent.after,
            AuditEvent.request_id,
            AuditEvent.source_ip,
        )
        .where(
            AuditEvent.target_type == "user",
            AuditEvent.target_id == str(user_id),
            AuditEvent.id > db.info.get("set_up", 0),
        )
        .order_by(AuditEvent.id)
    )
    return _unnamed(row.attributes), row.version, [tuple(e) for e in events]


def _unnamed(body: dict[str, Any]) -> dict[str, Any]:
    """A User without what tells two users made alike apart (and without the times)."""
    body = json.loads(json.dumps(body))
    for key in ("id", "userName", "emails"):
        body.pop(key, None)
    if "meta" in body:
        body["meta"] = {k: body["meta"][k] for k in ("resourceType", "version")}
    return body


def _both_ways(
    db: Session, users: tuple[int, int], body: dict[str, Any]
) -> tuple[tuple[dict[str, Any], int] | None, service.Stored]:
    operations = simple_patch(body)
    assert operations is not None
    db.info["set_up"] = db.scalar(select(func.max(AuditEvent.id)))
    fast = service.patch_user_simply(db, ACTOR, str(users[0]), operations, BASE)
    general = service.patch_user(db, ACTOR, str(users[1]), parse_patch(UserResource, body), BASE)
    db.commit()
    return fast, general


@pytest.mark.parametrize("body", SIMPLE)
@pytest.mark.parametrize("state", [UserState.ACTIVE, UserState.PRESERVED])
def test_a_simple_patch_serves_stores_and_audits_what_the_general_path_does(
    db: Session, scim_users: tuple[int, int], body: dict[str, Any], state: UserState
) -> None:
    if state is UserState.PRESERVED:
        # An admin's preserve: served (and, once saved, stored) ``active`` follows the state.
        for user_id in scim_users:
            identity.preserve_user(db, ACTOR, user_id)
        db.commit()
    fast, general = _both_ways(db, scim_users, body)
    assert fast is not None
    assert fast[1] == general.version
    assert _unnamed(fast[0]) == _unnamed(json.loads(json.dumps(general.body)))
    assert _state(db, scim_users[0]) == _state(db, scim_users[1])
    served = service.get_user(db, str(scim_users[0]), BASE)
    assert json.loads(json.dumps(served.body)) == json.loads(json.dumps(fast[0]))


def test_a_simple_patch_that_remaps_the_user_leaves_it_to_the_general_path(
    db: Session, scim_users: tuple[int, int]
) -> None:
    bosses = identity.create_profile(db, ACTOR, name="Bosses")
    region = identity.create_region(db, ACTOR, name="us", store_url="file:///tmp/fk-us")
    rule = {
        "type": "attribute",
        "conditions": [{"attribute": "title", "op": "equals", "value": "Boss"}],
    }
    service.add_mapping(
        db, ACTOR, rule=rule, profile_id=bosses.id, storage_region_id=region.id, priority=1
    )
    db.commit()
    before = _state(db, scim_users[0])
    body = patch({"op": "replace", "path": "title", "value": "Boss"})
    fast, _ = _both_ways(db, scim_users, body)
    assert fast is None
    assert _state(db, scim_users[0]) == (*before[:2], []), "nothing written before giving up"
    assert db.get(User, scim_users[1]).profile_id == bosses.id  # type: ignore[union-attr]


def test_a_simple_patch_of_a_user_an_admin_renamed_leaves_it_to_the_general_path(
    db: Session, scim_users: tuple[int, int]
) -> None:
    """The general path puts back what SCIM decides (display name …): so must a PATCH."""
    for user_id in scim_users:
        identity.update_user(db, ACTOR, user_id, display_name="Renamed")
    db.commit()
    fast, _ = _both_ways(db, scim_users, SIMPLE[0])
    assert fast is None
    assert db.get(User, scim_users[1]).display_name == "Kim Lee"  # type: ignore[union-attr]


def test_a_simple_patch_refuses_a_stale_etag_and_ignores_unknown_users(
    db: Session, scim_users: tuple[int, int]
) -> None:
    from fleetkeep.directories.scim.protocol import ScimError

    operations = simple_patch(SIMPLE[0])
    assert operations is not None
    with pytest.raises(ScimError) as refused:
        service.patch_user_simply(db, ACTOR, str(scim_users[0]), operations, BASE, 'W/"9"')
    assert refused.value.status == 412
    assert service.patch_user_simply(db, ACTOR, "999999", operations, BASE) is None
    assert service.patch_user_simply(db, ACTOR, "x", operations, BASE) is None
