"""Helpers for deployment tests: a profile, a region, users and tokens made through the API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient


@dataclass
class Org:
    """An organisation ready for deployment: one profile, one region, a deployment token."""

    client: TestClient
    profile_id: int
    region_id: int
    token: str
    token_id: int

    def user(self, email: str, **extra: Any) -> dict[str, Any]:
        r = self.client.post(
            "/api/v1/users",
            json={
                "email": email,
                "profile_id": extra.pop("profile_id", self.profile_id),
                "storage_region_id": self.region_id,
                **extra,
            },
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    def new_token(self, label: str = "campaign", **extra: Any) -> tuple[str, int]:
        r = self.client.post("/api/v1/deployment-tokens", json={"label": label, **extra})
        assert r.status_code == 201, r.text
        return str(r.json()["token"]), int(r.json()["id"])

    def activate(self, expect: int = 201, **fields: Any) -> dict[str, Any]:
        body = {"token": self.token, "platform": "windows", **fields}
        r = self.client.post("/device/v1/activations", json=body)
        assert r.status_code == expect, r.text
        return dict(r.json())

    def devices(self, **params: Any) -> list[dict[str, Any]]:
        r = self.client.get("/api/v1/devices", params={"limit": 1000, **params})
        assert r.status_code == 200, r.text
        return list(r.json()["items"])


@pytest.fixture
def org(owner: TestClient) -> Org:
    r = owner.post("/api/v1/profiles", json={"name": "Laptops", "max_devices_per_user": 2})
    assert r.status_code == 201, r.text
    profile_id = r.json()["id"]
    r = owner.post("/api/v1/storage-regions", json={"name": "local", "store_url": "file:///srv"})
    assert r.status_code == 201, r.text
    region_id = r.json()["id"]
    r = owner.post("/api/v1/deployment-tokens", json={"label": "rollout"})
    assert r.status_code == 201, r.text
    return Org(owner, profile_id, region_id, r.json()["token"], r.json()["id"])


def device_call(client: TestClient, method: str, path: str, token: str, **kw: Any) -> Any:
    """A device API call with a device token (and without the admin's credentials)."""
    headers = {"Authorization": f"Bearer {token}"}
    return client.request(method, path, headers=headers, **kw)
