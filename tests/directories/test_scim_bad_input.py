"""Bad SCIM input gets a SCIM error with the right status and scimType, and changes nothing.

Includes a property test: random filters and PATCH bodies never make the server answer 5xx.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.directories.scim_support import (
    ERROR_SCHEMA,
    GROUP_SCHEMA,
    USER_SCHEMA,
    new_user,
    patch,
    prepare,
)

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


@pytest.fixture
def scim(owner: TestClient) -> TestClient:
    setup = prepare(owner)
    owner.headers["Authorization"] = f"Bearer {setup.token}"
    return owner


@pytest.fixture
def uid(scim: TestClient) -> str:
    made = scim.post("/scim/v2/Users", json=new_user("base@example.com", title="T"))
    assert made.status_code == 201, made.text
    user_id: str = made.json()["id"]
    return user_id


@pytest.fixture
def gid(scim: TestClient, uid: str) -> str:
    made = scim.post(
        "/scim/v2/Groups",
        json={"schemas": [GROUP_SCHEMA], "displayName": "Base", "members": [{"value": uid}]},
    )
    assert made.status_code == 201, made.text
    group_id: str = made.json()["id"]
    return group_id


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/scim+json")
    body: dict[str, Any] = response.json()
    assert body["schemas"] == [ERROR_SCHEMA]
    assert body["status"] == str(status)
    return body


def count_users(scim: TestClient) -> int:
    total: int = scim.get("/scim/v2/Users").json()["totalResults"]
    return total


def test_malformed_json_is_invalid_syntax(scim: TestClient) -> None:
    response = scim.post(
        "/scim/v2/Users",
        content=b'{"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": ',
        headers={"Content-Type": "application/scim+json"},
    )
    assert error_of(response, 400)["scimType"] == "invalidSyntax"
    not_object = scim.post("/scim/v2/Users", json=["a"])
    assert error_of(not_object, 400)["scimType"] == "invalidSyntax"
    latin1 = scim.post("/scim/v2/Users", content='{"userName": "é"}'.encode("latin-1"))
    assert error_of(latin1, 400)["scimType"] == "invalidSyntax"
    assert count_users(scim) == 0


def test_unknown_or_missing_schemas_are_refused(scim: TestClient) -> None:
    unknown = new_user("x@example.com", schemas=[USER_SCHEMA, "urn:example:custom:1.0:User"])
    assert error_of(scim.post("/scim/v2/Users", json=unknown), 400)["scimType"] == "invalidSyntax"
    body = new_user("x@example.com")
    del body["schemas"]
    assert error_of(scim.post("/scim/v2/Users", json=body), 400)["scimType"] == "invalidSyntax"
    assert count_users(scim) == 0


def test_missing_user_name_or_email_is_invalid_value(scim: TestClient) -> None:
    no_name = scim.post("/scim/v2/Users", json={"schemas": [USER_SCHEMA], "displayName": "n"})
    assert error_of(no_name, 400)["scimType"] in {"invalidValue", "invalidSyntax"}
    no_email = scim.post("/scim/v2/Users", json={"schemas": [USER_SCHEMA], "userName": "bob"})
    body = error_of(no_email, 400)
    assert body["scimType"] == "invalidValue"
    assert "e-mail" in body["detail"]
    bad_type = scim.post("/scim/v2/Users", json=new_user("y@example.com", active="perhaps"))
    assert error_of(bad_type, 400)["scimType"] == "invalidValue"
    assert count_users(scim) == 0


@pytest.mark.parametrize(
    "text",
    [
        "userName eq",
        'userName zz "a"',
        'nosuchattribute eq "a"',
        'userName eq "a" and',
        "(" * 200 + "userName pr" + ")" * 200,
        'userName eq "' + "a" * 10_240 + '"',
        'emails[type eq "work"',
    ],
    ids=["no-value", "bad-op", "unknown-attr", "dangling-and", "deep", "10KB", "unclosed"],
)
def test_invalid_filters_are_invalid_filter(scim: TestClient, text: str) -> None:
    response = scim.get("/scim/v2/Users", params={"filter": text})
    assert error_of(response, 400)["scimType"] == "invalidFilter"


def test_patch_of_read_only_or_unknown_paths_is_refused(scim: TestClient, uid: str) -> None:
    read_only = scim.patch(
        f"/scim/v2/Users/{uid}", json=patch({"op": "replace", "path": "id", "value": "9"})
    )
    assert error_of(read_only, 400)["scimType"] == "mutability"
    bad_op = scim.patch(
        f"/scim/v2/Users/{uid}", json=patch({"op": "explode", "path": "title", "value": "x"})
    )
    assert error_of(bad_op, 400)["scimType"] in {"invalidValue", "invalidSyntax"}
    bad_path = scim.patch(
        f"/scim/v2/Users/{uid}", json=patch({"op": "replace", "path": "emails[", "value": "x"})
    )
    assert error_of(bad_path, 400)["scimType"] == "invalidPath"
    no_ops = scim.patch(f"/scim/v2/Users/{uid}", json={"schemas": [USER_SCHEMA]})
    assert error_of(no_ops, 400)["scimType"] in {"invalidValue", "invalidSyntax"}
    assert scim.get(f"/scim/v2/Users/{uid}").json()["title"] == "T"


def test_unknown_resources_and_methods(scim: TestClient) -> None:
    assert error_of(scim.get("/scim/v2/Users/999999"), 404)
    assert error_of(scim.get("/scim/v2/Users/not-a-number"), 404)
    assert error_of(scim.get("/scim/v2/Devices"), 404)
    assert error_of(scim.delete("/scim/v2/Schemas"), 405)
    rename = patch({"op": "replace", "path": "displayName", "value": "x"})
    assert error_of(scim.patch("/scim/v2/Groups/12", json=rename), 404)


# Property: never a 5xx -------------------------------------------------------------------------

ATTRIBUTES = [
    "userName",
    "displayName",
    "title",
    "active",
    "emails",
    "emails.value",
    "emails.type",
    "name.givenName",
    "meta.created",
    "meta.lastModified",
    "externalId",
    "id",
    f"{ENTERPRISE}:department",
    "groups.display",
    "nonsense",
]
OPERATORS = ["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le", "pr", "xx"]
VALUES = st.one_of(
    st.text(max_size=8).map(json.dumps),
    st.integers().map(str),
    st.sampled_from(["true", "false", "null", '"2024-01-01T00:00:00Z"', "garbage"]),
)


@st.composite
def filters(draw: st.DrawFn, depth: int = 0) -> str:
    kind = draw(st.integers(0, 5 if depth < 3 else 1))
    if kind == 0:
        attr, op = draw(st.sampled_from(ATTRIBUTES)), draw(st.sampled_from(OPERATORS))
        return f"{attr} pr" if op == "pr" else f"{attr} {op} {draw(VALUES)}"
    if kind == 1:
        return draw(st.text(max_size=30))
    if kind in (2, 3):
        joiner = draw(st.sampled_from(["and", "or", "AND", "nand"]))
        return f"{draw(filters(depth + 1))} {joiner} {draw(filters(depth + 1))}"
    if kind == 4:
        return f"not ({draw(filters(depth + 1))})"
    return f'emails[{draw(filters(depth + 1))}].value eq "x"'


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
OPERATION = st.fixed_dictionaries(
    {"op": st.sampled_from(["add", "replace", "remove", "Add", "Replace", "Remove", "move"])},
    optional={
        "path": st.one_of(
            st.sampled_from(
                [
                    *ATTRIBUTES,
                    'emails[type eq "work"].value',
                    "members",
                    'members[value eq "1"]',
                    "active",
                ]
            ),
            st.text(max_size=20),
        ),
        "value": JSON_VALUES | st.sampled_from(["True", "False"]),
    },
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    text=filters(),
    operations=st.lists(OPERATION, max_size=4),
    sort_by=st.sampled_from([None, *ATTRIBUTES]),
)
def test_random_filters_and_patches_never_cause_a_server_error(
    scim: TestClient,
    uid: str,
    gid: str,
    text: str,
    operations: list[dict[str, Any]],
    sort_by: str | None,
) -> None:
    params = {"filter": text} | ({"sortBy": sort_by} if sort_by else {})
    for endpoint in ("Users", "Groups"):
        listed = scim.get(f"/scim/v2/{endpoint}", params=params)
        assert listed.status_code < 500, (text, listed.text)
    body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations}
    for path in (f"Users/{uid}", f"Groups/{gid}"):
        patched = scim.patch(f"/scim/v2/{path}", json=body)
        assert patched.status_code < 500, (path, operations, patched.text)
        if patched.status_code >= 400:
            assert patched.json()["schemas"] == [ERROR_SCHEMA]
