"""Brute force against activation: refusals are counted in the database, per source and token."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetkeep.settings import Settings
from tests.deployment.conftest import Org


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
    assert any(a["type"] == "activation_brute_force" for a in items)
    assert org.devices() == []


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
