"""SCIM provisioning as Okta and Microsoft Entra ID really push it, and its lifecycle rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from scim2_models import Context
from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetkeep.audit.service import SYSTEM
from fleetkeep.directories.scim.models import ScimUser
from fleetkeep.directories.scim.protocol import (
    SEARCH_SCHEMA,
    UserResource,
    dump,
    parse_resource,
    user_name_filter,
)
from fleetkeep.directories.scim.service import Stored
from fleetkeep.identity.models import User, UserState
from tests.directories.scim_support import (
    ENTERPRISE,
    ERROR_SCHEMA,
    GROUP_SCHEMA,
    USER_SCHEMA,
    ScimSetup,
    new_user,
    patch,
    prepare,
)
from tests.support.servers import fleetkeep_env, run_cli


class Scim:
    """A SCIM client over the test app, as an identity provider holding the token."""

    def __init__(self, client: TestClient, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def __call__(self, method: str, path: str, body: Any = None, **headers: str) -> Any:
        response = self.client.request(
            method,
            f"/scim/v2{path}",
            json=body,
            headers={**self.headers, **headers, "Content-Type": "application/scim+json"},
        )
        return response


@pytest.fixture
def setup(owner: TestClient) -> ScimSetup:
    return prepare(owner)


@pytest.fixture
def scim(owner: TestClient, setup: ScimSetup) -> Scim:
    return Scim(owner, setup.token)


def admin_user(owner: TestClient, user_id: str) -> dict[str, Any]:
    response = owner.get(f"/api/v1/users/{user_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_scim_error(response: Any, status: int, scim_type: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/scim+json")
    body = response.json()
    assert body["schemas"] == [ERROR_SCHEMA]
    assert body["status"] == str(status)
    assert body.get("scimType") == scim_type
    assert body["detail"]


# Okta -----------------------------------------------------------------------------------------


def test_okta_create_deactivate_reactivate_sequence(
    scim: Scim, owner: TestClient, db: Session
) -> None:
    # Okta first looks the user up, then creates it.
    lookup = scim("GET", '/Users?filter=userName eq "dana@example.com"&startIndex=1&count=100')
    assert lookup.status_code == 200
    assert lookup.json()["totalResults"] == 0
    created = scim(
        "POST",
        "/Users",
        {
            "schemas": [USER_SCHEMA],
            "userName": "dana@example.com",
            "name": {"givenName": "Dana", "familyName": "Scully"},
            "emails": [{"primary": True, "value": "dana@example.com", "type": "work"}],
            "displayName": "Dana Scully",
            "locale": "en-US",
            "externalId": "00u1abcd",
            "groups": [],
            "password": "ignored-by-us",
            "active": True,
        },
    )
    assert created.status_code == 201, created.text
    user = created.json()
    assert created.headers["location"].endswith(f"/scim/v2/Users/{user['id']}")
    assert created.headers["etag"] == user["meta"]["version"]
    assert "password" not in user
    row = db.get(ScimUser, int(user["id"]))
    assert row is not None
    assert "password" not in row.attributes, "a password the IdP sends is never stored"
    stored = admin_user(owner, user["id"])
    assert stored["source"] == "scim"
    assert stored["external_id"] == "00u1abcd"
    assert stored["display_name"] == "Dana Scully"
    assert stored["state"] == "active"

    # Okta deactivates with a PATCH replace of active (Okta sends a real boolean).
    off = scim(
        "PATCH",
        f"/Users/{user['id']}",
        patch({"op": "replace", "value": {"active": False}}),
    )
    assert off.status_code == 200, off.text
    assert off.json()["active"] is False
    stored = admin_user(owner, user["id"])
    assert stored["state"] == "preserved"
    assert stored["preserved_by"] == "scim"

    on = scim("PATCH", f"/Users/{user['id']}", patch({"op": "replace", "value": {"active": True}}))
    assert on.status_code == 200, on.text
    assert on.json()["active"] is True
    assert admin_user(owner, user["id"])["state"] == "active"


def test_okta_group_push_adds_and_removes_members(scim: Scim) -> None:
    a = scim("POST", "/Users", new_user("a@example.com")).json()
    b = scim("POST", "/Users", new_user("b@example.com")).json()
    group = scim(
        "POST",
        "/Groups",
        {"schemas": [GROUP_SCHEMA], "displayName": "Engineering", "members": []},
    )
    assert group.status_code == 201, group.text
    gid = group.json()["id"]
    added = scim(
        "PATCH",
        f"/Groups/{gid}",
        patch(
            {
                "op": "add",
                "path": "members",
                "value": [{"value": a["id"], "display": "a"}, {"value": b["id"]}],
            }
        ),
    )
    assert added.status_code == 200, added.text
    assert {m["value"] for m in added.json()["members"]} == {a["id"], b["id"]}
    removed = scim(
        "PATCH",
        f"/Groups/{gid}",
        patch({"op": "remove", "path": f'members[value eq "{a["id"]}"]'}),
    )
    assert [m["value"] for m in removed.json()["members"]] == [b["id"]]
    user_b = scim("GET", f"/Users/{b['id']}").json()
    assert user_b["groups"] == [{"value": gid, "display": "Engineering", "type": "direct"}]


# Microsoft Entra ID ---------------------------------------------------------------------------


def test_entra_sequence_with_string_booleans_and_enterprise_extension(
    scim: Scim, owner: TestClient
) -> None:
    # Entra's provisioning service probes for a user that does not exist first.
    probe = scim("GET", '/Users?filter=userName eq "7a0b1c2d-probe"')
    assert probe.json() == {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": 0,
        "startIndex": 1,
        "itemsPerPage": 0,
        "Resources": [],
    }
    created = scim(
        "POST",
        "/Users",
        {
            "schemas": [USER_SCHEMA, ENTERPRISE],
            "externalId": "ryan",
            "userName": "Ryan/Leenay?@contoso.com",
            "active": True,
            "displayName": "Ryan Leenay",
            "emails": [{"primary": True, "type": "work", "value": "ryan@contoso.com"}],
            "meta": {"resourceType": "User"},
            "name": {"familyName": "Leenay", "givenName": "Ryan"},
            "roles": [],
            ENTERPRISE: {"department": "Sales", "employeeNumber": "701984"},
        },
    )
    assert created.status_code == 201, created.text
    uid = created.json()["id"]
    stored = admin_user(owner, uid)
    assert stored["username"] == "Ryan_Leenay_@contoso.com"
    assert stored["upn"] == "Ryan/Leenay?@contoso.com"
    assert stored["email"] == "ryan@contoso.com"
    assert created.json()[ENTERPRISE]["department"] == "Sales"

    # Entra updates attributes with capitalised ops and filtered paths.
    updated = scim(
        "PATCH",
        f"/Users/{uid}",
        patch(
            {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "ryan2@contoso.com"},
            {"op": "Replace", "path": f"{ENTERPRISE}:department", "value": "Marketing"},
            {"op": "Add", "path": f"{ENTERPRISE}:manager", "value": "12345"},
            {"op": "Replace", "path": "name.familyName", "value": "Leenay-Smith"},
        ),
    )
    assert updated.status_code == 200, updated.text
    body = updated.json()
    assert body["emails"][0]["value"] == "ryan2@contoso.com"
    assert body[ENTERPRISE]["department"] == "Marketing"
    assert body[ENTERPRISE]["manager"]["value"] == "12345"
    assert admin_user(owner, uid)["email"] == "ryan2@contoso.com"

    # Disable: Entra sends the boolean as the string "False".
    off = scim(
        "PATCH", f"/Users/{uid}", patch({"op": "Replace", "path": "active", "value": "False"})
    )
    assert off.status_code == 200, off.text
    assert off.json()["active"] is False
    assert admin_user(owner, uid)["state"] == "preserved"
    on = scim("PATCH", f"/Users/{uid}", patch({"op": "Replace", "path": "active", "value": "True"}))
    assert on.json()["active"] is True
    assert admin_user(owner, uid)["state"] == "active"

    # Group membership: add, then remove with a value list (Entra's shape).
    group = scim("POST", "/Groups", {"schemas": [GROUP_SCHEMA], "displayName": "Sales EU"}).json()
    add = scim(
        "PATCH",
        f"/Groups/{group['id']}",
        patch({"op": "Add", "path": "members", "value": [{"value": uid}]}),
    )
    assert add.status_code == 200, add.text
    listed = scim("GET", '/Groups?filter=displayName eq "Sales EU"&excludedAttributes=members')
    assert listed.json()["totalResults"] == 1
    assert "members" not in listed.json()["Resources"][0]
    remove = scim(
        "PATCH",
        f"/Groups/{group['id']}",
        patch({"op": "Remove", "path": "members", "value": [{"value": uid}]}),
    )
    assert remove.status_code == 200, remove.text
    assert "members" not in remove.json()

    # Un-assignment ends with DELETE: the user is preserved, never deleted.
    gone = scim("DELETE", f"/Users/{uid}")
    assert gone.status_code == 204
    assert scim("GET", f"/Users/{uid}").status_code == 404
    stored = admin_user(owner, uid)
    assert stored["state"] == "preserved"
    assert stored["preserved_by"] == "scim"


def test_entra_path_less_replace_with_dotted_urn_and_filtered_keys(
    scim: Scim, owner: TestClient
) -> None:
    uid = scim("POST", "/Users", new_user("pia@example.com")).json()["id"]
    changed = scim(
        "PATCH",
        f"/Users/{uid}",
        patch(
            {
                "op": "Replace",
                "value": {
                    "displayName": "Pia P",
                    "name.givenName": "Pia",
                    'emails[type eq "work"].value': "pia.p@example.com",
                    f"{ENTERPRISE}:department": "Sales",
                    "active": "False",
                },
            }
        ),
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["displayName"] == "Pia P"
    assert body["name"]["givenName"] == "Pia"
    assert body["emails"] == [{"value": "pia.p@example.com", "type": "work", "primary": True}]
    assert body[ENTERPRISE]["department"] == "Sales"
    assert body["active"] is False
    stored = admin_user(owner, uid)
    assert stored["email"] == "pia.p@example.com"
    assert stored["state"] == "preserved"


def test_reassignment_after_delete_restores_the_same_user(scim: Scim, owner: TestClient) -> None:
    uid = scim("POST", "/Users", new_user("eve@example.com")).json()["id"]
    assert scim("DELETE", f"/Users/{uid}").status_code == 204
    again = scim("POST", "/Users", new_user("eve@example.com"))
    assert again.status_code == 201, again.text
    assert again.json()["id"] == uid
    assert admin_user(owner, uid)["state"] == "active"


def test_scim_does_not_reactivate_a_user_an_admin_preserved(scim: Scim, owner: TestClient) -> None:
    uid = scim("POST", "/Users", new_user("frank@example.com")).json()["id"]
    assert owner.post(f"/api/v1/users/{uid}/preserve").status_code == 200
    shown = scim("GET", f"/Users/{uid}").json()
    assert shown["active"] is False
    refused = scim(
        "PATCH", f"/Users/{uid}", patch({"op": "replace", "path": "active", "value": True})
    )
    assert_scim_error(refused, 400, "mutability")
    assert "administrator" in refused.json()["detail"]
    stored = admin_user(owner, uid)
    assert stored["state"] == "preserved"
    assert stored["preserved_by"] == "admin"


def test_scim_cannot_take_over_a_user_of_another_source(
    scim: Scim, owner: TestClient, setup: ScimSetup
) -> None:
    made = owner.post(
        "/api/v1/users",
        json={
            "email": "grace@example.com",
            "profile_id": setup.profile_id,
            "storage_region_id": setup.region_id,
        },
    )
    assert made.status_code == 201, made.text
    refused = scim("POST", "/Users", new_user("grace@example.com"))
    assert_scim_error(refused, 409, "uniqueness")
    assert "'manual'" in refused.json()["detail"]
    assert admin_user(owner, str(made.json()["id"]))["source"] == "manual"


def test_duplicate_user_name_is_a_uniqueness_error(scim: Scim) -> None:
    assert scim("POST", "/Users", new_user("hank@example.com")).status_code == 201
    clash = scim("POST", "/Users", new_user("HANK@example.com"))
    assert_scim_error(clash, 409, "uniqueness")


def test_user_no_mapping_matches_is_refused_with_the_fix(owner: TestClient) -> None:
    setup = prepare(owner, catch_all=False)
    assert (
        owner.post(
            "/api/v1/scim/mappings",
            json={
                "rule": {
                    "type": "attribute",
                    "conditions": [{"attribute": "department", "op": "equals", "value": "Sales"}],
                },
                "profile": "Staff",
                "region": "eu",
                "quota": "25GB",
            },
        ).status_code
        == 201
    )
    scim = Scim(owner, setup.token)
    refused = scim("POST", "/Users", new_user("ivy@example.com"))
    assert_scim_error(refused, 400, "invalidValue")
    assert "no SCIM mapping matches" in refused.json()["detail"]
    assert owner.get("/api/v1/users", params={"q": "ivy"}).json()["items"] == []
    sales = new_user("ivy@example.com", schemas=[USER_SCHEMA, ENTERPRISE])
    sales[ENTERPRISE] = {"department": "Sales"}
    made = scim("POST", "/Users", sales)
    assert made.status_code == 201, made.text
    stored = admin_user(owner, made.json()["id"])
    assert stored["quota"] == {"value": 25, "unit": "GB"}


def test_group_mapping_moves_members_to_its_profile(owner: TestClient, scim: Scim) -> None:
    vip = owner.post("/api/v1/profiles", json={"name": "VIP"}).json()
    owner.post(
        "/api/v1/scim/mappings",
        json={
            "rule": {"type": "group", "group": "Executives"},
            "profile": "VIP",
            "region": "eu",
            "priority": 1,
        },
    ).raise_for_status()
    uid = scim("POST", "/Users", new_user("jo@example.com")).json()["id"]
    assert admin_user(owner, uid)["profile_id"] != vip["id"]
    scim(
        "POST",
        "/Groups",
        {"schemas": [GROUP_SCHEMA], "displayName": "Executives", "members": [{"value": uid}]},
    ).raise_for_status()
    assert admin_user(owner, uid)["profile_id"] == vip["id"]


# Protocol details -----------------------------------------------------------------------------


def test_stale_if_match_is_refused_with_412_and_changes_nothing(scim: Scim) -> None:
    made = scim("POST", "/Users", new_user("kim@example.com"))
    uid, etag = made.json()["id"], made.headers["etag"]
    ok = scim(
        "PATCH",
        f"/Users/{uid}",
        patch({"op": "replace", "path": "title", "value": "A"}),
        **{"If-Match": etag},
    )
    assert ok.status_code == 200
    assert ok.headers["etag"] != etag
    stale = scim(
        "PATCH",
        f"/Users/{uid}",
        patch({"op": "replace", "path": "title", "value": "B"}),
        **{"If-Match": etag},
    )
    assert_scim_error(stale, 412)
    assert scim("GET", f"/Users/{uid}").json()["title"] == "A"


def test_filters_sorting_paging_and_projection(scim: Scim) -> None:
    for name, dept in [("c@x.org", "Ops"), ("a@x.org", "Sales"), ("b@y.org", "Sales")]:
        body = new_user(name, schemas=[USER_SCHEMA, ENTERPRISE], title=name[0].upper())
        body[ENTERPRISE] = {"department": dept}
        assert scim("POST", "/Users", body).status_code == 201
    found = scim(
        "GET",
        f'/Users?filter={ENTERPRISE}:department eq "Sales"'
        ' and (userName sw "a" or userName co "@y")'
        "&sortBy=userName&sortOrder=descending&attributes=userName",
    ).json()
    assert [r["userName"] for r in found["Resources"]] == ["b@y.org", "a@x.org"]
    assert set(found["Resources"][0]) == {"schemas", "id", "userName"}
    page = scim("GET", "/Users?sortBy=userName&startIndex=2&count=1").json()
    assert page["totalResults"] == 3
    assert page["startIndex"] == 2
    assert [r["userName"] for r in page["Resources"]] == ["b@y.org"]
    assert scim("GET", '/Users?filter=title pr and not (title eq "C")').json()["totalResults"] == 2
    recent = scim("GET", '/Users?filter=meta.lastModified gt "2000-01-01T00:00:00Z"').json()
    assert recent["totalResults"] == 3
    future = scim("GET", '/Users?filter=meta.created lt "2000-01-01T00:00:00Z"').json()
    assert future["totalResults"] == 0
    excluded = scim("GET", "/Users?excludedAttributes=emails,name").json()["Resources"][0]
    assert "emails" not in excluded
    assert "userName" in excluded


def test_filters_on_attributes_without_an_index_still_find_users(scim: Scim) -> None:
    made = scim("POST", "/Users", new_user("nia@example.com", displayName="Nia Long")).json()
    scim("POST", "/Users", new_user("oz@example.com", displayName="Oz"))
    for text in (
        'displayName eq "Nia Long"',
        'displayName eq "nia long"',
        'displayName eq "Nia Long" and userName sw "nia"',
        f'id eq "{made["id"]}"',
        'emails[type eq "work" and value eq "nia@example.com"]',
    ):
        found = scim("GET", f"/Users?filter={text}").json()
        assert [r["id"] for r in found["Resources"]] == [made["id"]], text


def test_user_name_eq_answers_as_the_filter_parser_does(scim: Scim) -> None:
    """``userName eq`` skips the parser (the common case); the answer must not change."""
    made = scim("POST", "/Users", new_user("Rae.Quote@example.com", displayName="Rae")).json()
    scim("POST", "/Users", new_user("rae@example.com"))
    group = {"schemas": [GROUP_SCHEMA], "displayName": "Ops", "members": [{"value": made["id"]}]}
    assert scim("POST", "/Groups", group).status_code == 201
    for text in (
        'userName eq "rae.quote@example.com"',
        'USERNAME EQ "Rae.Quote@example.com"',
        ' userName  eq  "RAE.QUOTE@EXAMPLE.COM" ',
        'userName eq "Rae.Quote\u0040example.com"',
        'userName eq "nobody@example.com"',
    ):
        fast = scim("GET", f"/Users?filter={quote(text)}")
        parsed = scim(
            "POST", "/Users/.search", {"schemas": [SEARCH_SCHEMA], "filter": text, "count": 50}
        )
        assert fast.status_code == parsed.status_code == 200, text
        assert fast.json() == parsed.json(), text
    found = scim("GET", "/Users?filter=" + quote('userName eq "rae.quote@example.com"'))
    assert [g["display"] for g in found.json()["Resources"][0]["groups"]] == ["Ops"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"filter": 'userName eq "a@b.c"'}, "a@b.c"),
        ({"filter": 'username EQ "a\\"b"'}, 'a"b'),
        ({"filter": 'userName eq "a@b.c" and active eq true'}, None),
        ({"filter": 'userName eq "a" or userName eq "b"'}, None),
        ({"filter": 'userName ne "a@b.c"'}, None),
        ({"filter": 'emails.value eq "a@b.c"'}, None),
        ({"filter": 'userName eq "a@b.c"', "attributes": "userName"}, None),
        ({"filter": 'userName eq "a@b.c"', "startIndex": "2"}, None),
        ({"filter": 'userName eq "\\x"'}, None),
        ({}, None),
    ],
)
def test_only_a_lone_user_name_eq_takes_the_index_only_answer(
    params: dict[str, Any], expected: str | None
) -> None:
    assert user_name_filter(params) == expected


def test_served_user_is_the_model_dump_of_the_stored_user() -> None:
    """Responses are built from the stored attributes; they equal the validated model's dump."""
    body = new_user(
        "Kim@example.com",
        schemas=[USER_SCHEMA, ENTERPRISE],
        externalId="k-1",
        password="not-kept-in-answers",
        name={"givenName": "Kim", "familyName": "Lee", "formatted": "Kim Lee"},
        title="Engineer",
        phoneNumbers=[{"value": "+1 555 0100", "type": "work"}],
        addresses=[{"streetAddress": "1 Main St", "country": "US", "primary": True}],
        x509Certificates=[{"value": "TWFu"}],
    )
    body[ENTERPRISE] = {"department": "Ops", "manager": {"value": "7", "$ref": "../Users/7"}}
    resource = parse_resource(UserResource, body, Context.RESOURCE_CREATION_REQUEST)
    attributes = resource.model_dump(scim_ctx=Context.DEFAULT)
    moments = [datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), datetime(2026, 1, 2, 3, 4, 5, 60, UTC)]
    for state in (UserState.ACTIVE, UserState.PRESERVED):
        for groups in ([], [(3, "Ops"), (9, "All staff")]):
            user = User(id=42, state=state)
            row = ScimUser(
                user_id=42,
                attributes=attributes,
                created_at=moments[0],
                updated_at=moments[1],
                version=5,
            )
            stored = Stored(user, row, groups, "https://fk.example/scim/v2")
            expected = dump(stored.resource, Context.RESOURCE_QUERY_RESPONSE, None)
            assert json.loads(json.dumps(stored.body)) == expected
            assert "password" not in stored.body


def test_put_replaces_and_refuses_another_users_name(scim: Scim) -> None:
    a = scim("POST", "/Users", new_user("lea@example.com")).json()
    scim("POST", "/Users", new_user("max@example.com"))
    body = new_user("lea@example.com", displayName="Lea L")
    replaced = scim("PUT", f"/Users/{a['id']}", body)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["displayName"] == "Lea L"
    clash = scim("PUT", f"/Users/{a['id']}", new_user("max@example.com"))
    assert_scim_error(clash, 409, "uniqueness")


def test_discovery_documents(scim: Scim) -> None:
    config = scim("GET", "/ServiceProviderConfig").json()
    assert config["patch"]["supported"] is True
    assert config["etag"]["supported"] is True
    assert config["bulk"]["supported"] is False
    types = scim("GET", "/ResourceTypes").json()
    assert {r["id"] for r in types["Resources"]} == {"User", "Group"}
    user_type = scim("GET", "/ResourceTypes/User").json()
    assert user_type["schemaExtensions"][0]["schema"] == ENTERPRISE
    schemas = scim("GET", "/Schemas").json()
    assert {s["id"] for s in schemas["Resources"]} == {USER_SCHEMA, ENTERPRISE, GROUP_SCHEMA}
    assert scim("GET", f"/Schemas/{ENTERPRISE}").json()["id"] == ENTERPRISE


# Authentication and tokens --------------------------------------------------------------------


def test_requests_without_a_valid_token_are_refused(owner: TestClient, setup: ScimSetup) -> None:
    assert_scim_error(Scim(owner, "nope")("GET", "/Users"), 401)
    bare = owner.get("/scim/v2/Users", headers={"Authorization": ""})
    assert_scim_error(bare, 401)


def test_regenerating_the_token_invalidates_the_old_one(
    owner: TestClient, setup: ScimSetup
) -> None:
    again = owner.post("/api/v1/scim/token", json={})
    assert again.status_code == 409
    fresh = owner.post("/api/v1/scim/token", json={"regenerate": True, "days": 30})
    assert fresh.status_code == 201, fresh.text
    assert_scim_error(Scim(owner, setup.token)("GET", "/Users"), 401)
    assert Scim(owner, fresh.json()["token"])("GET", "/Users").status_code == 200
    shown = owner.get("/api/v1/scim/token").json()
    assert shown["token"] is None
    assert fresh.json()["token"].startswith(shown["prefix"])


def test_token_expiry_alert_opens_14_days_ahead_and_closes_on_regenerate(
    db: Session,
) -> None:
    from fleetkeep.alerts.service import list_alerts
    from fleetkeep.directories.scim import service

    _, token = service.create_token(db, SYSTEM, days=30)
    assert service.check_token_expiry(db) is None
    assert service.check_token_expiry(db, now=token.expires_at - timedelta(days=13)) is not None
    alerts = list_alerts(db, type="scim_token_expiry")
    assert len(alerts) == 1
    assert "regenerate" in alerts[0].message
    service.create_token(db, SYSTEM, regenerate=True)
    assert list_alerts(db, type="scim_token_expiry") == []


def test_token_lives_365_days_by_default_and_only_its_hash_is_stored(db: Session) -> None:
    from fleetkeep.directories.scim import service
    from fleetkeep.directories.scim.models import ScimToken
    from fleetkeep.tokens import hash_token

    plain, token = service.create_token(db, SYSTEM)
    assert token.expires_at - token.created_at == timedelta(days=365)
    stored = db.scalars(select(ScimToken)).one()
    assert stored.token_hash == hash_token(plain)
    assert plain not in {stored.token_hash, stored.prefix}
    assert service.check_token_expiry(db, now=token.expires_at - timedelta(days=15)) is None
    warned = service.check_token_expiry(db, now=token.expires_at - timedelta(days=14))
    assert warned is not None


def test_unsafe_user_name_characters_become_underscores() -> None:
    from fleetkeep.directories.scim.protocol import sanitize_username

    assert sanitize_username("a?b*c/d\\e<f>g@x.org") == "a_b_c_d_e_f_g@x.org"


def test_cli_makes_shows_and_regenerates_the_token_and_adds_mappings(
    clean_engine: Any, database_url: str, tmp_path: Path
) -> None:
    env = fleetkeep_env(tmp_path / "data", database_url)
    run_cli(["init", "--email", "o@example.com", "--password-stdin"], env, stdin="pw-123456789\n")
    run_cli(["profiles", "add", "Staff"], env)
    run_cli(["regions", "add", "eu", "--store-url", "file:///tmp/eu"], env)
    added = run_cli(
        ["scim", "mappings", "add", "--profile", "Staff", "--region", "eu", "--quota", "20GB"], env
    )
    assert "SCIM mapping" in added.stdout
    bad = run_cli(
        ["scim", "mappings", "add", "--profile", "Staff", "--region", "eu", "--rule", "{nope"],
        env,
        check=False,
    )
    assert bad.returncode == 2
    made = run_cli(["scim", "token", "create"], env)
    token = next(w for w in made.stdout.split() if w.startswith("fkscim_"))
    again = run_cli(["scim", "token", "create"], env, check=False)
    assert again.returncode == 1
    assert "regenerate" in again.stderr
    shown = run_cli(["scim", "token", "show"], env)
    assert token[:12] in shown.stdout
    assert token not in shown.stdout
    fresh = run_cli(["scim", "token", "regenerate", "--days", "30"], env)
    assert token not in fresh.stdout
    assert "fkscim_" in fresh.stdout
