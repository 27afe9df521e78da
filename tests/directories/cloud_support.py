"""Setting a server up for a cloud directory sync, through the admin API as an admin would."""

from __future__ import annotations

import httpx


def add_catch_all_mapping(admin: httpx.Client, directory_name: str) -> None:
    """A Staff profile, an eu region, and a mapping of everyone in the directory to them."""
    profile = admin.post("/api/v1/profiles", json={"name": "Staff"})
    profile.raise_for_status()
    region = admin.post(
        "/api/v1/storage-regions", json={"name": "eu", "store_url": "file:///tmp/fk-eu"}
    )
    region.raise_for_status()
    listed = admin.get("/api/v1/directories")
    listed.raise_for_status()
    directory_id = next(d["id"] for d in listed.json() if d["name"] == directory_name)
    admin.post(
        f"/api/v1/directories/{directory_id}/mappings",
        json={
            "rule": {"type": "all"},
            "profile_id": profile.json()["id"],
            "storage_region_id": region.json()["id"],
        },
    ).raise_for_status()
