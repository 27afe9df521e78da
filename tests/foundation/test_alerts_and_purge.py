"""Alerts stay one per condition; deleted users are purged after retention."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from fleetkeep.alerts.service import raise_alert, resolve_alert
from fleetkeep.audit.service import SYSTEM
from fleetkeep.db import utcnow
from fleetkeep.identity import service as identity


def test_an_alert_is_raised_once_updated_in_place_and_resolved(
    owner: TestClient, db: Session
) -> None:
    first = raise_alert(db, "key_provider", "connector", "critical", "Key connector not connected")
    again = raise_alert(
        db, "key_provider", "connector", "critical", "still not connected", {"since": "now"}
    )
    other = raise_alert(db, "key_provider", "kms", "warning", "KMS slow")
    db.commit()
    assert first.id == again.id
    assert again.occurrences == 2
    assert other.id != first.id
    listed = owner.get("/api/v1/alerts").json()["items"]
    assert {(a["subject"], a["occurrences"]) for a in listed} == {("connector", 2), ("kms", 1)}
    resolve_alert(db, "key_provider", "connector")
    db.commit()
    assert [a["subject"] for a in owner.get("/api/v1/alerts").json()["items"]] == ["kms"]
    reopened = raise_alert(db, "key_provider", "connector", "critical", "lost again")
    db.commit()
    assert reopened.id != first.id
    resolved = owner.post(f"/api/v1/alerts/{other.id}/resolve").json()
    assert resolved["status"] == "resolved"
    history = owner.get("/api/v1/alerts", params={"status": "all"}).json()["items"]
    assert len(history) == 3


def test_deleted_users_are_purged_only_after_the_retention_period(db: Session) -> None:
    profile = identity.create_profile(db, SYSTEM, name="P")
    region = identity.create_region(db, SYSTEM, name="R", store_url="file:///x")
    users = [
        identity.create_user(
            db,
            SYSTEM,
            email=f"u{i}@example.com",
            profile_id=profile.id,
            storage_region_id=region.id,
        )
        for i in range(3)
    ]
    identity.delete_user(db, SYSTEM, users[0].id)
    identity.delete_user(db, SYSTEM, users[1].id)
    users[0].state_changed_at = utcnow() - timedelta(days=31)
    db.flush()
    assert identity.purge_deleted_users(db, SYSTEM, retention_days=30) == 1
    db.commit()
    remaining = {u.email for u in identity.list_users(db)}
    assert remaining == {"u1@example.com", "u2@example.com"}
