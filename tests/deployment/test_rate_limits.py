"""Brute force against activation: refusals are counted in the database, per source and token."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetkeep.settings import Settings
from tests.deployment.conftest import Org, device_call


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        activation_max_failures=5,
        activation_max_failures_per_token=3,
        activation_failure_window_seconds=60,
    )


def test_guessing_tokens_from_one_source_is_rate_limited_with_an_alert(org: Org) -> None:
    org.user("ann@example.com")
    for i in range(5):
        body = org.activate(401, token=f"fkt_guess{i}", email="ann@example.com", hostname="h")
        assert body["code"] == "token_invalid"
    r = org.client.post(
        "/device/v1/activations",
        json={"token": org.token, "email": "ann@example.com", "hostname": "h", "platform": "linux"},
    )
    assert r.status_code == 429
    assert r.json()["code"] == "rate_limited"
    assert int(r.headers["retry-after"]) == 60
    alerts = org.client.get("/api/v1/alerts").json()
    items = alerts["items"] if isinstance(alerts, dict) else alerts
    assert [a["type"] for a in items].count("activation_brute_force") == 1
    assert org.devices() == []
    # The turned-away attempt is audited, and a second one refreshes the same alert.
    org.activate(429, email="ann@example.com", hostname="h")
    audit = org.client.get("/api/v1/audit", params={"action": "device.activation_refused"})
    codes = [e["after"]["code"] for e in audit.json()["items"]]
    assert codes.count("rate_limited") == 2
    assert codes.count("token_invalid") == 5
    alerts = org.client.get("/api/v1/alerts").json()
    [alert] = [a for a in alerts["items"] if a["type"] == "activation_brute_force"]
    assert alert["occurrences"] == 2


def test_guessing_users_with_a_valid_token_is_rate_limited_per_token(org: Org, db) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import update

    from fleetkeep.deployment.models import ActivationFailure

    org.user("ann@example.com")
    for i in range(3):
        org.activate(404, email=f"guess{i}@example.com", hostname="h")
    # Pretend the failures came from many addresses: the per-token limit still holds.
    db.execute(update(ActivationFailure).values(source="203.0.113.9"))
    db.commit()
    r = org.client.post(
        "/device/v1/activations",
        json={"token": org.token, "email": "ann@example.com", "hostname": "h", "platform": "linux"},
    )
    assert r.status_code == 429, r.text


def test_guessing_device_tokens_is_audited_and_rate_limited_per_source(org: Org) -> None:
    org.user("ann@example.com")
    for i in range(5):
        r = device_call(org.client, "POST", "/device/v1/heartbeat", f"fkd_guess{i}")
        assert r.status_code == 401
        assert r.json()["code"] == "device_unauthorized"
    r = device_call(org.client, "POST", "/device/v1/heartbeat", "fkd_guess-again")
    assert r.status_code == 429
    assert r.json()["code"] == "rate_limited"
    # The same source is now refused activations too: it is one budget per source.
    assert org.activate(429, email="ann@example.com", hostname="h")["code"] == "rate_limited"
    audit = org.client.get("/api/v1/audit", params={"action": "device.token_refused"}).json()
    assert [e["after"]["code"] for e in audit["items"]].count("token_invalid") == 5
    alerts = org.client.get("/api/v1/alerts").json()["items"]
    assert [a["subject"] for a in alerts if a["type"] == "activation_brute_force"] == [
        "source:testclient"
    ]
    assert org.devices() == []
