"""Activation over the device API: modes, refusals with stable codes, idempotent retries."""

from __future__ import annotations

from sqlalchemy import Engine, event

from fleetkeep.tokens import hash_token
from tests.deployment.conftest import Org, device_call


def test_email_and_token_activation_returns_device_token_and_configuration(org: Org) -> None:
    org.user("ann@example.com")
    got = org.activate(email="Ann@Example.com", hostname="ANN-PC", serial_number="S1")
    assert got["mode"] == "email"
    assert got["device_token"].startswith("fkd_")
    assert got["reactivated"] is False
    config = got["config"]
    assert config["user"]["email"] == "ann@example.com"
    assert config["profile"]["name"] == "Laptops"
    assert config["backup_interval_minutes"] == 240
    assert config["device_api"].endswith("/device/v1")
    [device] = org.devices()
    assert device["id"] == got["device_id"]
    assert device["state"] == "active"
    assert device["user_email"] == "ann@example.com"


def test_the_device_token_is_stored_only_as_a_hash(org: Org, db) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    org.user("ann@example.com")
    got = org.activate(email="ann@example.com", hostname="ANN-PC")
    stored = db.execute(text("SELECT token_hash FROM devices")).scalar_one()
    assert stored == hash_token(got["device_token"])
    assert got["device_token"] not in str(db.execute(text("SELECT * FROM audit_events")).all())


def test_a_retried_activation_returns_the_same_device_not_a_duplicate(org: Org) -> None:
    org.user("ann@example.com")
    first = org.activate(email="ann@example.com", hostname="ANN-PC", serial_number="SER-1")
    again = org.activate(email="ann@example.com", hostname="ann-pc", serial_number="ser-1")
    assert again["device_id"] == first["device_id"]
    assert again["reactivated"] is True
    assert len(org.devices()) == 1
    # The token of the lost first response no longer works; the new one does.
    client = org.client
    assert (
        device_call(client, "POST", "/device/v1/heartbeat", first["device_token"]).status_code
        == 401
    )
    assert (
        device_call(client, "POST", "/device/v1/heartbeat", again["device_token"]).status_code
        == 200
    )


def test_hostname_only_devices_are_idempotent_per_user(org: Org) -> None:
    org.user("ann@example.com")
    first = org.activate(email="ann@example.com", hostname="ANN-PC")
    again = org.activate(email="ann@example.com", hostname="ANN-PC")
    assert first["device_id"] == again["device_id"]
    assert len(org.devices()) == 1


def test_refusals_carry_a_stable_code_and_a_reason_and_create_nothing(org: Org) -> None:
    org.user("ann@example.com")
    preserved = org.user("pat@example.com")
    org.client.post(f"/api/v1/users/{preserved['id']}/preserve")
    cases = [
        ({"email": "nobody@example.com"}, 404, "user_not_found"),
        ({"email": "pat@example.com"}, 403, "user_preserved"),
        ({"token": "fkt_not-a-real-token", "email": "ann@example.com"}, 401, "token_invalid"),
        ({"token": None, "email": "ann@example.com"}, 401, "token_missing"),
        ({}, 422, "identity_missing"),
    ]
    for fields, status, code in cases:
        r = org.client.post(
            "/device/v1/activations",
            json={"token": org.token, "platform": "linux", "hostname": "h1", **fields},
        )
        assert r.status_code == status, (fields, r.text)
        body = r.json()
        assert r.headers["content-type"] == "application/problem+json"
        assert body["code"] == code
        assert body["detail"]
    assert org.devices() == []
    audit = org.client.get("/api/v1/audit", params={"action": "device.activation_refused"})
    codes = {e["after"]["code"] for e in audit.json()["items"]}
    assert codes == {c for _, _, c in cases}


def test_revoked_and_expired_tokens_are_refused_with_their_own_codes(org: Org) -> None:
    org.user("ann@example.com")
    revoked, revoked_id = org.new_token("old")
    expiring, expiring_id = org.new_token("short")
    assert (
        org.client.delete(f"/api/v1/deployment-tokens/{revoked_id}").json()["status"] == "revoked"
    )
    assert org.client.post(f"/api/v1/deployment-tokens/{expiring_id}/expire").status_code == 200
    for token, code in ((revoked, "token_revoked"), (expiring, "token_expired")):
        body = org.activate(401, token=token, email="ann@example.com", hostname="h")
        assert body["code"] == code
    # Other tokens stay live: many live at once.
    assert org.activate(email="ann@example.com", hostname="h")["mode"] == "email"


def test_token_usage_is_counted_and_the_secret_is_never_listed(org: Org) -> None:
    org.user("ann@example.com")
    org.activate(email="ann@example.com", hostname="a")
    org.activate(email="ann@example.com", hostname="b")
    listed = org.client.get("/api/v1/deployment-tokens").json()
    [token] = listed
    assert token["use_count"] == 2
    assert token["last_used_at"] is not None
    assert "token" not in token
    assert org.token not in str(listed)


def test_a_scoped_token_only_activates_into_its_profiles(org: Org) -> None:
    other = org.client.post("/api/v1/profiles", json={"name": "Servers"}).json()["id"]
    org.user("ann@example.com")
    scoped, _ = org.new_token("servers only", profile_ids=[other])
    body = org.activate(403, token=scoped, email="ann@example.com", hostname="a")
    assert body["code"] == "profile_not_allowed"


def test_the_profile_device_limit_is_enforced(org: Org) -> None:
    org.user("ann@example.com")  # the profile allows 2 devices
    org.activate(email="ann@example.com", hostname="one")
    org.activate(email="ann@example.com", hostname="two")
    body = org.activate(409, email="ann@example.com", hostname="three")
    assert body["code"] == "device_limit_reached"
    assert body["limit"] == 2
    assert len(org.devices()) == 2


def test_a_device_cannot_claim_another_users_serial(org: Org) -> None:
    org.user("ann@example.com")
    org.user("bob@example.com")
    org.activate(email="ann@example.com", hostname="ann-pc", serial_number="SER-9")
    body = org.activate(409, email="bob@example.com", hostname="bob-pc", serial_number="ser-9")
    assert body["code"] == "device_claimed"
    assert [d["user_email"] for d in org.devices()] == ["ann@example.com"]


def test_auth_keys_work_once_and_are_consumed_even_by_a_failed_use(org: Org) -> None:
    ann = org.user("ann@example.com")
    org.user("bob@example.com")

    def key() -> str:
        r = org.client.post("/api/v1/auth-keys", json={"user_id": ann["id"]})
        assert r.status_code == 201, r.text
        return str(r.json()["key"])

    good = key()
    got = org.activate(token=None, auth_key=good, hostname="ann-pc")
    assert got["mode"] == "auth-key"
    assert org.activate(401, token=None, auth_key=good, hostname="x")["code"] == "auth_key_used"
    wasted = key()
    mismatch = org.activate(403, token=None, auth_key=wasted, email="bob@example.com", hostname="y")
    assert mismatch["code"] == "email_mismatch"
    again = org.activate(401, token=None, auth_key=wasted, hostname="y")
    assert again["code"] == "auth_key_used"


def test_oversized_and_malformed_requests_get_a_clear_error_an_audit_record_and_no_device(
    org: Org,
) -> None:
    org.user("ann@example.com")
    r = org.client.post(
        "/device/v1/activations",
        json={
            "token": org.token,
            "platform": "windows",
            "email": "ann@example.com",
            "hostname": "h" * 5000,
        },
    )
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_input"
    assert "hostname" in r.json()["detail"]
    r = org.client.post(
        "/device/v1/activations",
        json={"token": org.token, "platform": "amiga", "hostname": "h"},
    )
    assert r.status_code == 422
    assert "platform" in r.json()["detail"]
    assert org.devices() == []
    audit = org.client.get("/api/v1/audit", params={"action": "device.activation_refused"})
    assert [e["after"]["code"] for e in audit.json()["items"]] == ["invalid_input", "invalid_input"]


def test_forged_device_tokens_are_unauthorized_audited_and_change_nothing(org: Org) -> None:
    org.user("ann@example.com")
    real = org.activate(email="ann@example.com", hostname="h")
    before = org.devices()
    for token in ("fkd_forged", "", "fkt_" + "a" * 43, real["device_token"] + "x"):
        r = device_call(org.client, "POST", "/device/v1/heartbeat", token)
        assert r.status_code == 401
        assert r.json()["code"] == "device_unauthorized"
        assert r.json()["reason"] in ("token_invalid", "token_missing")
    assert org.devices() == before
    audit = org.client.get("/api/v1/audit", params={"action": "device.token_refused"}).json()
    reasons = sorted(e["after"]["code"] for e in audit["items"])
    assert reasons == ["token_invalid", "token_invalid", "token_invalid", "token_missing"]
    assert real["device_token"] not in str(audit)


def test_heartbeat_updates_last_seen_and_agent_version(org: Org) -> None:
    org.user("ann@example.com")
    got = org.activate(email="ann@example.com", hostname="h", agent_version="0.1.0")
    before = org.devices()[0]["last_seen_at"]
    r = device_call(
        org.client,
        "POST",
        "/device/v1/heartbeat",
        got["device_token"],
        json={"agent_version": "0.2.0"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "active"
    device = org.devices()[0]
    assert device["agent_version"] == "0.2.0"
    assert device["last_seen_at"] >= before


def test_preserving_or_deleting_a_user_unauthorizes_their_devices_at_once(org: Org) -> None:
    ann = org.user("ann@example.com")
    bob = org.user("bob@example.com")
    ann_token = org.activate(email="ann@example.com", hostname="a")["device_token"]
    bob_token = org.activate(email="bob@example.com", hostname="b")["device_token"]
    org.client.post(f"/api/v1/users/{ann['id']}/preserve")
    org.client.delete(f"/api/v1/users/{bob['id']}")
    for token, reason in ((ann_token, "user_preserved"), (bob_token, "user_deleted")):
        r = device_call(org.client, "POST", "/device/v1/heartbeat", token)
        assert r.status_code == 401
        assert r.json()["code"] == "device_unauthorized"
        assert r.json()["reason"] == reason
    org.client.post(f"/api/v1/users/{ann['id']}/restore")
    assert device_call(org.client, "POST", "/device/v1/heartbeat", ann_token).status_code == 200


def test_an_activation_costs_six_statements(org: Org, clean_engine: Engine) -> None:
    """A budget: activation storms are bound by server CPU, and each statement costs some.

    Token with refusal counts and mapping row; user (locked); devices; device; audit; token use.
    """
    org.user("ann@example.com")
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    event.listen(clean_engine, "before_cursor_execute", count)
    try:
        org.activate(email="ann@example.com", hostname="ANN-PC", serial_number="S1")
        new = len(statements)
        org.activate(email="ann@example.com", hostname="ANN-PC", serial_number="S1")
    finally:
        event.remove(clean_engine, "before_cursor_execute", count)
    assert new == 6, statements
    assert len(statements) - new == 6, statements[new:]  # a retry: the device is updated instead
