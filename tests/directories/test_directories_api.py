"""``/api/v1/directories`` against a real slapd: registration, tests, syncs, holds, history."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from fleetkeep.directories.credentials import KEY_FILE
from fleetkeep.settings import Settings
from tests.support.servers import free_port
from tests.support.slapd import AD_BASE, SYNC_PASSWORD, Slapd


def setup_places(api: TestClient) -> tuple[int, int]:
    profile = api.post("/api/v1/profiles", json={"name": "Staff"}).json()["id"]
    region = api.post(
        "/api/v1/storage-regions", json={"name": "local", "store_url": "file:///srv/fk"}
    ).json()["id"]
    return profile, region


def register(api: TestClient, slapd: Slapd, base: str, **overrides: Any) -> dict[str, Any]:
    settings = {
        "hosts": [f"127.0.0.1:{slapd.port}"],
        "bind_dn": slapd.sync_dn(AD_BASE),
        "base_dn": base,
    }
    settings.update(overrides.pop("settings", {}))
    body = {
        "name": f"corp-{base.split(',')[0][3:]}",
        "kind": "ad",
        "settings": settings,
        "bind_password": SYNC_PASSWORD,
        **overrides,
    }
    response = api.post("/api/v1/directories", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def add_all_mapping(api: TestClient, directory_id: int) -> None:
    profile, region = setup_places(api)
    response = api.post(
        f"/api/v1/directories/{directory_id}/mappings",
        json={"rule": {"type": "all"}, "profile_id": profile, "storage_region_id": region},
    )
    assert response.status_code == 201, response.text


def test_the_bind_password_is_sealed_and_never_returned(
    api: TestClient, slapd: Slapd, clean_engine: Engine, settings: Settings
) -> None:
    directory = register(api, slapd, slapd.new_ou())
    assert directory["has_secret"] is True
    assert directory["settings"]["attributes"]["username"] == "sAMAccountName"
    assert directory["settings"]["port"] == 389
    listed = api.get("/api/v1/directories").text
    assert SYNC_PASSWORD not in listed
    with clean_engine.connect() as conn:
        stored = conn.execute(text("SELECT secret FROM directories")).scalar_one()
        audit = " ".join(str(r) for r in conn.execute(text("SELECT after FROM audit_events")))
    assert stored.startswith("v1:")
    assert SYNC_PASSWORD not in stored
    assert SYNC_PASSWORD not in audit
    assert (settings.data_dir / KEY_FILE).stat().st_mode & 0o777 == 0o600


def test_connection_test_reports_every_step(api: TestClient, slapd: Slapd) -> None:
    directory = register(api, slapd, slapd.new_ou())
    report = api.post(f"/api/v1/directories/{directory['id']}/test").json()
    assert report["ok"] is True
    assert [s["name"] for s in report["steps"]] == ["dns", "tcp", "bind", "base_dn"]


def test_wrong_bind_password_is_named_by_the_test_and_fails_the_sync(
    api: TestClient, slapd: Slapd
) -> None:
    directory = register(api, slapd, slapd.new_ou(), bind_password="wrong")
    report = api.post(f"/api/v1/directories/{directory['id']}/test").json()
    assert report["ok"] is False
    assert report["failed_step"] == "bind"
    assert report["field"] == "bind_password"
    run = api.post(f"/api/v1/directories/{directory['id']}/sync").json()
    assert run["status"] == "failed"
    assert "bind_password" in run["error"]
    alerts = api.get("/api/v1/alerts").json()
    items = alerts["items"] if isinstance(alerts, dict) else alerts
    assert any(a["type"] == "directory.sync_failed" for a in items)


def test_unreachable_hosts_fail_over_and_missing_base_dn_is_named(
    api: TestClient, slapd: Slapd
) -> None:
    closed = free_port()
    directory = register(
        api,
        slapd,
        slapd.new_ou(),
        settings={
            "hosts": ["no-such-host.invalid", f"127.0.0.1:{closed}", f"127.0.0.1:{slapd.port}"]
        },
    )
    report = api.post(f"/api/v1/directories/{directory['id']}/test").json()
    assert report["ok"] is True
    failed = [(s["name"], s["ok"]) for s in report["steps"] if not s["ok"]]
    assert failed == [("dns", False), ("tcp", False)]
    missing = register(api, slapd, f"ou=nowhere,{AD_BASE}")
    report = api.post(f"/api/v1/directories/{missing['id']}/test").json()
    assert (report["failed_step"], report["field"]) == ("base_dn", "settings.base_dn")


def test_ldaps_and_starttls_with_the_test_ca(api: TestClient, slapd: Slapd) -> None:
    ou = slapd.new_ou()
    ldaps = register(
        api,
        slapd,
        ou,
        name="ldaps",
        settings={
            "hosts": [f"127.0.0.1:{slapd.ldaps_port}"],
            "security": "ldaps",
            "ca_cert": slapd.ca_pem,
        },
    )
    report = api.post(f"/api/v1/directories/{ldaps['id']}/test").json()
    assert report["ok"] is True, report
    assert [s["name"] for s in report["steps"]] == ["dns", "tcp", "tls", "bind", "base_dn"]
    starttls = register(
        api, slapd, ou, name="starttls", settings={"security": "starttls", "ca_cert": slapd.ca_pem}
    )
    assert api.post(f"/api/v1/directories/{starttls['id']}/test").json()["ok"] is True
    untrusted = register(
        api,
        slapd,
        ou,
        name="untrusted",
        settings={"hosts": [f"127.0.0.1:{slapd.ldaps_port}"], "security": "ldaps"},
    )
    report = api.post(f"/api/v1/directories/{untrusted['id']}/test").json()
    assert (report["failed_step"], report["field"]) == ("tls", "settings.ca_cert")


def test_malformed_filters_are_refused_naming_the_field_and_change_nothing(
    api: TestClient, slapd: Slapd
) -> None:
    r = api.post(
        "/api/v1/directories",
        json={
            "name": "bad",
            "kind": "ad",
            "settings": {"hosts": ["127.0.0.1"], "base_dn": AD_BASE, "user_filter": "(&(cn=a)"},
        },
    )
    assert r.status_code == 422
    assert r.json()["field"] == "settings.user_filter"
    assert api.get("/api/v1/directories").json() == []
    directory = register(api, slapd, slapd.new_ou())
    profile, region = setup_places(api)
    for rule, field in [
        ({"type": "filter", "filter": "(department=Sales"}, "rule.filter"),
        ({"type": "filter", "filter": "(cn=a*(b)"}, "rule.filter"),
        ({"type": "ou", "ou": "Sales"}, "rule.ou"),
        ({"type": "magic"}, "rule.type"),
        (
            {"type": "attribute", "conditions": [{"attribute": "cn", "op": "like", "value": "x"}]},
            "rule.conditions[0].op",
        ),
    ]:
        r = api.post(
            f"/api/v1/directories/{directory['id']}/mappings",
            json={"rule": rule, "profile_id": profile, "storage_region_id": region},
        )
        assert r.status_code == 422, rule
        assert r.json()["field"] == field, r.json()
    assert api.get(f"/api/v1/directories/{directory['id']}/mappings").json() == []


def test_safety_threshold_holds_the_sync_until_confirmed_and_history_shows_it(
    api: TestClient, slapd: Slapd
) -> None:
    ou = slapd.new_ou()
    dns = [slapd.add_ad_user(ou, f"h{i}") for i in range(5)]
    directory = register(api, slapd, ou, hold_above_count=1, hold_above_percent=100)
    add_all_mapping(api, directory["id"])
    first = api.post(f"/api/v1/directories/{directory['id']}/sync").json()
    assert (first["status"], first["created"]) == ("succeeded", 5)
    for dn in dns[:3]:
        slapd.delete(dn)
    dry = api.post(f"/api/v1/directories/{directory['id']}/sync", params={"dry_run": True}).json()
    assert (dry["status"], dry["preserved"]) == ("dry-run", 3)
    held = api.post(f"/api/v1/directories/{directory['id']}/sync").json()
    assert held["status"] == "held"
    assert "3 users" in held["held_reason"]
    users = api.get("/api/v1/users", params={"state": "active"}).json()["items"]
    assert len(users) == 5
    confirmed = api.post(f"/api/v1/directories/{directory['id']}/syncs/{held['id']}/confirm")
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "confirmed"
    users = api.get("/api/v1/users", params={"state": "preserved"}).json()["items"]
    assert len(users) == 3
    again = api.post(f"/api/v1/directories/{directory['id']}/syncs/{held['id']}/confirm")
    assert again.status_code == 409
    history = api.get(f"/api/v1/directories/{directory['id']}/syncs").json()["items"]
    assert [r["status"] for r in history] == ["confirmed", "dry-run", "succeeded"]
    assert history[2]["seen"] == 5
