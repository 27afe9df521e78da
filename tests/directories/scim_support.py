"""Setting a server up for SCIM pushes: a profile, a region, a catch-all mapping, a token."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"


@dataclass
class ScimSetup:
    token: str
    profile_id: int
    region_id: int


def prepare(admin: httpx.Client, *, catch_all: bool = True) -> ScimSetup:
    """Through the admin API, as an admin would: profile, region, mapping(s), token."""
    profile = admin.post("/api/v1/profiles", json={"name": "Staff"})
    profile.raise_for_status()
    region = admin.post(
        "/api/v1/storage-regions", json={"name": "eu", "store_url": "file:///tmp/fk-eu"}
    )
    region.raise_for_status()
    if catch_all:
        mapping = admin.post(
            "/api/v1/scim/mappings",
            json={"rule": {"type": "all"}, "profile": "Staff", "region": "eu", "priority": 1000},
        )
        mapping.raise_for_status()
    token = admin.post("/api/v1/scim/token", json={})
    token.raise_for_status()
    return ScimSetup(token.json()["token"], profile.json()["id"], region.json()["id"])


def new_user(user_name: str, **extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "schemas": [USER_SCHEMA],
        "userName": user_name,
        "active": True,
        "emails": [{"value": user_name, "type": "work", "primary": True}],
    }
    body.update(extra)
    return body


def patch(*operations: dict[str, object]) -> dict[str, object]:
    return {"schemas": [PATCH_SCHEMA], "Operations": list(operations)}
