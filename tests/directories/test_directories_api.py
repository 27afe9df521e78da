"""``/api/v1/directories`` against a real slapd: registration, tests, syncs, holds, history."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from fleetkeep.directories.credentials import KEY_FILE
from fleetkeep.settings import Settings
from tests.support.servers import free_port
from tests.support.slapd import AD_BASE, SYNC_PASSWORD, Slapd, make_test_ca


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


def refused(api: TestClient, slapd: Slapd, base: str, **overrides: Any) -> dict[str, Any]:
    """Register, expecting a 422; checks that nothing was saved."""
    settings = {"hosts": [f"127.0.0.1:{slapd.port}"], "bind_dn": slapd.sync_dn(AD_BASE)}
    settings.update(overrides.pop("settings", {}))
    body = {
        "name": "refused",
        "kind": "ad",
        "settings": {"base_dn": base, **settings},
        "bind_password": SYNC_PASSWORD,
        **overrides,
    }
    before = api.get("/api/v1/directories").json()
    response = api.post("/api/v1/directories", json=body)
    assert response.status_code == 422, response.text
    assert api.get("/api/v1/directories").json() == before
    return dict(response.json())


def service_account(slapd: Slapd, ou: str, password: str) -> str:
    dn = f"cn=svc,{ou}"
    slapd.add(
        dn, {"objectClass": ["person"], "cn": ["svc"], "sn": ["svc"], "userPassword": [password]}
    )
    return dn


def test_a_wrong_bind_password_is_refused_at_registration_naming_the_field(
    api: TestClient, slapd: Slapd
) -> None:
    problem = refused(api, slapd, slapd.new_ou(), bind_password="wrong")
    assert (problem["field"], problem["code"], problem["step"]) == (
        "bind_password",
        "directory_refused",
        "bind",
    )
    assert "invalid credentials" in problem["detail"]
    problem = refused(api, slapd, slapd.new_ou(), settings={"bind_dn": "cn=nobody"})
    assert problem["field"] == "bind_password"


def test_a_rotated_service_password_is_named_by_the_test_and_fails_the_sync(
    api: TestClient, slapd: Slapd
) -> None:
    ou = slapd.new_ou()
    account = service_account(slapd, ou, "first-password")
    directory = register(
        api, slapd, ou, bind_password="first-password", settings={"bind_dn": account}
    )
    slapd.modify(account, {"userPassword": ["rotated-password"]})
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
    patched = api.patch(
        f"/api/v1/directories/{directory['id']}", json={"bind_password": "still-wrong"}
    )
    assert (patched.status_code, patched.json()["field"]) == (422, "bind_password")
    patched = api.patch(
        f"/api/v1/directories/{directory['id']}", json={"bind_password": "rotated-password"}
    )
    assert patched.status_code == 200, patched.text
    assert api.post(f"/api/v1/directories/{directory['id']}/test").json()["ok"] is True


def test_unreachable_hosts_fail_over_and_a_missing_base_dn_is_named(
    api: TestClient, slapd: Slapd
) -> None:
    closed = free_port()
    ou = slapd.new_ou()
    directory = register(
        api,
        slapd,
        ou,
        settings={
            "hosts": ["no-such-host.invalid", f"127.0.0.1:{closed}", f"127.0.0.1:{slapd.port}"]
        },
    )
    report = api.post(f"/api/v1/directories/{directory['id']}/test").json()
    assert (report["ok"], report["failed_step"]) == (True, None)
    failed = [(s["name"], s["ok"]) for s in report["steps"] if not s["ok"]]
    assert failed == [("dns", False), ("tcp", False)]
    assert [s["name"] for s in report["steps"] if s["ok"]] == [
        "dns",
        "dns",
        "tcp",
        "bind",
        "base_dn",
    ]
    problem = refused(api, slapd, f"ou=nowhere,{AD_BASE}")
    assert (problem["field"], problem["step"]) == ("settings.base_dn", "base_dn")
    # A base DN that disappears after registration is what the test then reports.
    slapd.delete(ou)
    report = api.post(f"/api/v1/directories/{directory['id']}/test").json()
    assert (report["failed_step"], report["field"]) == ("base_dn", "settings.base_dn")
    # No host answering at all is no refusal: the directory may be reachable later.
    offline = register(
        api, slapd, AD_BASE, name="offline", settings={"hosts": [f"127.0.0.1:{closed}"]}
    )
    report = api.post(f"/api/v1/directories/{offline['id']}/test").json()
    assert (report["failed_step"], report["field"]) == ("tcp", None)


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
    report = api.post(f"/api/v1/directories/{starttls['id']}/test").json()
    assert report["ok"] is True
    assert [s["name"] for s in report["steps"]] == ["dns", "tcp", "tls", "bind", "base_dn"]
    for security, port in (("ldaps", slapd.ldaps_port), ("starttls", slapd.port)):
        problem = refused(
            api,
            slapd,
            ou,
            settings={"hosts": [f"127.0.0.1:{port}"], "security": security},
        )
        assert (problem["field"], problem["step"]) == ("settings.ca_cert", "tls"), security
    other_ca = make_test_ca(Path(tempfile.mkdtemp()))[0].read_text()
    problem = refused(
        api,
        slapd,
        ou,
        settings={
            "hosts": [f"127.0.0.1:{slapd.ldaps_port}"],
            "security": "ldaps",
            "ca_cert": other_ca,
        },
    )
    assert problem["field"] == "settings.ca_cert"
    assert "certificate verify failed" in problem["detail"]


def test_unknown_attributes_are_refused_naming_the_field_and_change_nothing(
    api: TestClient, slapd: Slapd
) -> None:
    ou = slapd.new_ou()
    problem = refused(api, slapd, ou, settings={"attributes": {"emial": "mail"}})
    assert problem["field"] == "settings.attributes.emial"
    problem = refused(api, slapd, ou, settings={"attributes": {"email": "mial"}})
    assert (problem["field"], problem["code"]) == ("settings.attributes.email", "unknown_attribute")
    problem = refused(api, slapd, ou, settings={"disabled_filter": "(accountDisabled=TRUE)"})
    assert problem["field"] == "settings.disabled_filter"
    directory = register(api, slapd, ou, settings={"attributes": {"display_name": "cn"}})
    profile, region = setup_places(api)
    url = f"/api/v1/directories/{directory['id']}/mappings"
    for rule, field in [
        (
            {
                "type": "attribute",
                "conditions": [
                    {"attribute": "department", "op": "equals", "value": "Sales"},
                    {"attribute": "departmnt", "op": "equals", "value": "Sales"},
                ],
            },
            "rule.conditions[1].attribute",
        ),
        ({"type": "filter", "filter": "(&(company=ACME)(costCenter=7))"}, "rule.filter"),
    ]:
        r = api.post(url, json={"rule": rule, "profile_id": profile, "storage_region_id": region})
        assert r.status_code == 422, rule
        assert (r.json()["field"], r.json()["code"]) == (field, "unknown_attribute")
    assert api.get(url).json() == []
    ok = api.post(
        url,
        json={
            "rule": {"type": "filter", "filter": "(&(company=ACME)(memberOf=cn=x,dc=y))"},
            "profile_id": profile,
            "storage_region_id": region,
        },
    )
    assert ok.status_code == 201, ok.text


def test_mappings_take_creation_order_and_can_be_reordered(api: TestClient, slapd: Slapd) -> None:
    directory = register(api, slapd, slapd.new_ou())
    profile, region = setup_places(api)
    url = f"/api/v1/directories/{directory['id']}/mappings"
    ids = []
    for group in ("a", "b", "c"):
        r = api.post(
            url,
            json={
                "rule": {"type": "group", "group": group},
                "profile_id": profile,
                "storage_region_id": region,
            },
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    assert [(m["id"], m["priority"]) for m in api.get(url).json()] == list(
        zip(ids, [1, 2, 3], strict=True)
    )
    r = api.put(f"{url}/order", json={"mapping_ids": [ids[2], ids[0], ids[1]]})
    assert r.status_code == 200, r.text
    assert [m["id"] for m in api.get(url).json()] == [ids[2], ids[0], ids[1]]
    r = api.put(f"{url}/order", json={"mapping_ids": [ids[2], ids[0]]})
    assert (r.status_code, r.json()["field"]) == (422, "mapping_ids")
    assert [m["id"] for m in api.get(url).json()] == [ids[2], ids[0], ids[1]]


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
    assert held_alerts(api) == ["open"]
    confirmed = api.post(f"/api/v1/directories/{directory['id']}/syncs/{held['id']}/confirm")
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "confirmed"
    assert held_alerts(api) == ["resolved"]
    users = api.get("/api/v1/users", params={"state": "preserved"}).json()["items"]
    assert len(users) == 3
    again = api.post(f"/api/v1/directories/{directory['id']}/syncs/{held['id']}/confirm")
    assert again.status_code == 409
    history = api.get(f"/api/v1/directories/{directory['id']}/syncs").json()["items"]
    assert [r["status"] for r in history] == ["confirmed", "dry-run", "succeeded"]
    assert history[2]["seen"] == 5


def held_alerts(api: TestClient) -> list[str]:
    alerts = api.get("/api/v1/alerts", params={"status": "all"}).json()
    items = alerts["items"] if isinstance(alerts, dict) else alerts
    return [a["status"] for a in items if a["type"] == "directory.sync_held"]


def test_disabling_many_users_at_once_is_held_too(api: TestClient, slapd: Slapd) -> None:
    ou = slapd.new_ou()
    dns = [slapd.add_ad_user(ou, f"d{i}") for i in range(10)]
    directory = register(api, slapd, ou, hold_above_count=500, hold_above_percent=20)
    add_all_mapping(api, directory["id"])
    assert api.post(f"/api/v1/directories/{directory['id']}/sync").json()["created"] == 10
    for dn in dns[:3]:
        slapd.modify(dn, {"userAccountControl": ["514"]})
    held = api.post(f"/api/v1/directories/{directory['id']}/sync").json()
    assert held["status"] == "held"
    assert "3 of 10 users (30.0 %)" in held["held_reason"]
    assert len(api.get("/api/v1/users", params={"state": "active"}).json()["items"]) == 10
