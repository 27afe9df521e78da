"""Devices as admins see them: search, state changes, inactivity, explain."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from fleetkeep.audit.service import SYSTEM
from fleetkeep.db import utcnow
from fleetkeep.deployment.devices import mark_inactive_devices
from fleetkeep.deployment.models import Device
from tests.deployment.conftest import Org, device_call


def test_devices_can_be_searched_and_filtered(org: Org) -> None:
    org.user("ann@example.com")
    org.user("bob@example.com")
    org.activate(email="ann@example.com", hostname="ANN-LAPTOP", platform="windows")
    org.activate(email="bob@example.com", hostname="BOB-MAC", platform="macos", serial_number="Q9")
    assert [d["hostname"] for d in org.devices(q="laptop")] == ["ANN-LAPTOP"]
    assert [d["hostname"] for d in org.devices(q="q9")] == ["BOB-MAC"]
    assert [d["hostname"] for d in org.devices(q="bob@")] == ["BOB-MAC"]
    assert [d["hostname"] for d in org.devices(platform="macos")] == ["BOB-MAC"]
    page = org.client.get("/api/v1/devices", params={"limit": 1}).json()
    rest = org.client.get("/api/v1/devices", params={"limit": 1, "cursor": page["next_cursor"]})
    assert [page["items"][0]["hostname"], rest.json()["items"][0]["hostname"]] == [
        "ANN-LAPTOP",
        "BOB-MAC",
    ]


def test_disabled_devices_are_unauthorized_until_enabled(org: Org) -> None:
    org.user("ann@example.com")
    got = org.activate(email="ann@example.com", hostname="h")
    device_id, token = got["device_id"], got["device_token"]
    assert org.client.post(f"/api/v1/devices/{device_id}/disable").json()["state"] == "disabled"
    r = device_call(org.client, "POST", "/device/v1/heartbeat", token)
    assert (r.status_code, r.json()["reason"]) == (401, "device_disabled")
    # Re-activating a disabled device is refused too.
    assert org.activate(403, email="ann@example.com", hostname="h")["code"] == "device_disabled"
    assert org.client.post(f"/api/v1/devices/{device_id}/enable").json()["state"] == "active"
    assert device_call(org.client, "POST", "/device/v1/heartbeat", token).status_code == 200
    r = org.client.post(f"/api/v1/devices/{device_id}/enable")
    assert (r.status_code, r.json()["code"]) == (409, "illegal_transition")


def test_decommissioning_frees_the_device_slot_and_its_serial(org: Org) -> None:
    org.user("ann@example.com")
    org.user("bob@example.com")
    first = org.activate(email="ann@example.com", hostname="a", serial_number="S")
    org.activate(email="ann@example.com", hostname="b")
    assert (
        org.activate(409, email="ann@example.com", hostname="c")["code"] == "device_limit_reached"
    )
    org.client.post(f"/api/v1/devices/{first['device_id']}/decommission")
    org.activate(email="ann@example.com", hostname="c")
    assert (
        org.activate(email="bob@example.com", hostname="bob", serial_number="S")["mode"] == "email"
    )


def test_a_revoked_device_token_stops_working_and_activation_issues_a_new_one(org: Org) -> None:
    org.user("ann@example.com")
    got = org.activate(email="ann@example.com", hostname="h")
    org.client.post(f"/api/v1/devices/{got['device_id']}/revoke-token")
    assert (
        device_call(org.client, "POST", "/device/v1/heartbeat", got["device_token"]).status_code
        == 401
    )
    again = org.activate(email="ann@example.com", hostname="h")
    assert again["device_id"] == got["device_id"]
    assert (
        device_call(org.client, "POST", "/device/v1/heartbeat", again["device_token"]).status_code
        == 200
    )


def test_devices_silent_for_n_days_become_inactive_and_a_heartbeat_revives_them(
    org: Org, db: Session
) -> None:
    org.user("ann@example.com")
    quiet = org.activate(email="ann@example.com", hostname="quiet")
    org.activate(email="ann@example.com", hostname="busy")
    db.execute(
        update(Device)
        .where(Device.id == quiet["device_id"])
        .values(last_seen_at=utcnow() - timedelta(days=31))
    )
    assert mark_inactive_devices(db, SYSTEM, 30) == 1
    db.commit()
    assert {d["hostname"]: d["state"] for d in org.devices()} == {
        "quiet": "inactive",
        "busy": "active",
    }
    assert [d["hostname"] for d in org.devices(state="inactive")] == ["quiet"]
    r = device_call(org.client, "POST", "/device/v1/heartbeat", quiet["device_token"])
    assert r.json()["state"] == "active"


def test_explain_says_which_rule_refused_or_what_matched(org: Org) -> None:
    ann = org.user("ann@example.com")
    org.activate(email="ann@example.com", hostname="ANN-PC")
    r = org.client.get(
        "/api/v1/devices/explain", params={"email": "ann@example.com", "hostname": "ann-pc"}
    )
    body = r.json()
    assert body["outcome"] == "reactivate"
    assert body["user_id"] == ann["id"]
    assert any(s["rule"] == "device identity" and s["outcome"] == "match" for s in body["steps"])
    r = org.client.get(
        "/api/v1/devices/explain", params={"email": "ghost@example.com", "hostname": "x"}
    )
    assert (r.json()["outcome"], r.json()["code"]) == ("refuse", "user_not_found")
    org.client.post(f"/api/v1/users/{ann['id']}/preserve")
    r = org.client.get(
        "/api/v1/devices/explain",
        params={"email": "ann@example.com", "hostname": "NEW", "token": org.token},
    )
    body = r.json()
    assert body["code"] == "user_preserved"
    assert [s["rule"] for s in body["steps"]][:2] == ["token", "user"]
    # Explaining changes nothing: no device, no audit of a refusal.
    assert len(org.devices()) == 1
    audit = org.client.get("/api/v1/audit", params={"action": "device.activation_refused"})
    assert audit.json()["items"] == []
