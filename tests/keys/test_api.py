"""``/api/v1/keys`` and the ``/connector/v1`` socket, in process (TestClient)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.testclient import WebSocketTestSession

from fleetkeep.connector.client import Connector
from fleetkeep.keys import endpoint
from fleetkeep.keys.keyfile import Ekey
from fleetkeep.keys.models import ConnectorToken
from fleetkeep.keys.service import init_keys
from fleetkeep.keys.wrapping import key_check_value
from fleetkeep.settings import Settings
from fleetkeep.tokens import hash_token
from tests.keys.conftest import make_users


@pytest.fixture(autouse=True)
def initialised(db: Session, settings: Settings) -> None:
    """What ``fleetkeep init`` does for keys: the local key file and key version 1."""
    init_keys(db, settings)
    db.commit()


def _role_headers(owner: TestClient, role: str) -> dict[str, str]:
    created = owner.post("/api/v1/tokens", json={"label": role, "role": role})
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['token']}"}


def _ekey() -> Ekey:
    key = os.urandom(32)
    return Ekey(key, key_check_value(key), "")


def _connector_token(owner: TestClient) -> str:
    created = owner.post("/api/v1/keys/connector-tokens", json={"label": "dc-1"})
    assert created.status_code == 201, created.text
    token: str = created.json()["token"]
    return token


@pytest.fixture
def socket_factory(owner: TestClient) -> Iterator[Any]:
    opened: list[WebSocketTestSession] = []

    def connect(token: str) -> WebSocketTestSession:
        ws = owner.websocket_connect("/connector/v1", headers={"Authorization": f"Bearer {token}"})
        opened.append(ws.__enter__())
        return opened[-1]

    yield connect
    for ws in opened:
        ws.__exit__(None, None, None)


def _hello(ws: WebSocketTestSession, *keys: Ekey) -> dict[str, Any]:
    ws.send_json(
        {
            "type": "hello",
            "host": "dc-1",
            "version": "test",
            "kcvs": [k.kcv for k in keys],
            "current_kcv": keys[-1].kcv,
        }
    )
    answer: dict[str, Any] = ws.receive_json()
    return answer


def test_status_shows_the_provider_version_and_rotation(owner: TestClient) -> None:
    owner.post("/api/v1/keys/rotate", json={})
    status = owner.get("/api/v1/keys/status").json()
    assert status["provider"] == "local"
    assert status["key_version"] == 2
    assert status["connected"] is True
    assert status["connectors"] == []
    assert status["rotation_days"] == 90


def test_connector_tokens_are_shown_once_stored_hashed_and_revocable(
    owner: TestClient, db: Session
) -> None:
    token = _connector_token(owner)
    assert token.startswith("fkc_")
    listed = owner.get("/api/v1/keys/connector-tokens").json()
    assert [t["label"] for t in listed] == ["dc-1"]
    assert "token" not in listed[0]
    stored = db.scalar(select(ConnectorToken))
    assert stored is not None
    assert stored.token_hash == hash_token(token)
    assert token not in repr(vars(stored))
    revoked = owner.delete(f"/api/v1/keys/connector-tokens/{listed[0]['id']}")
    assert revoked.json()["revoked_at"] is not None
    assert owner.delete("/api/v1/keys/connector-tokens/999").json()["code"] == "not_found"


def test_only_an_owner_rotates_or_makes_connector_tokens(owner: TestClient) -> None:
    admin = _role_headers(owner, "admin")
    reader = _role_headers(owner, "read-only")
    assert owner.get("/api/v1/keys/status", headers=reader).status_code == 200
    for method, path, body in [
        ("POST", "/api/v1/keys/rotate", {}),
        ("POST", "/api/v1/keys/connector-tokens", {"label": "x"}),
    ]:
        for headers in (admin, reader):
            refused = owner.request(method, path, headers=headers, json=body)
            assert refused.status_code == 403, (path, refused.text)
    assert owner.get("/api/v1/keys/status").json()["key_version"] == 1


def test_rotation_to_kms_without_an_arn_is_refused_and_changes_nothing(owner: TestClient) -> None:
    refused = owner.post("/api/v1/keys/rotate", json={"provider": "awskms"})
    assert refused.status_code == 422
    assert "kms_key_arn" in refused.json()["detail"]
    assert owner.get("/api/v1/keys/status").json()["key_version"] == 1


def test_a_connector_serves_wrap_and_unwrap_through_the_socket(
    owner: TestClient, db: Session, socket_factory: Any
) -> None:
    users = make_users(db, 2)
    ekey = _ekey()
    token = _connector_token(owner)
    ws = socket_factory(token)
    assert _hello(ws, ekey)["type"] == "welcome"
    connector = Connector("ws://test", token, {ekey.kcv: ekey}, ekey.kcv)

    def answered(call: Any, requests: int) -> Any:
        """Run an API call in a thread while this thread plays the connector."""
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(call)
            for _ in range(requests):
                ws.send_json(connector.answer(ws.receive_json()))
            return future.result(timeout=30)

    rotated = answered(lambda: owner.post("/api/v1/keys/rotate", json={"provider": "connector"}), 0)
    assert rotated.status_code == 200, rotated.text
    checked = answered(lambda: owner.post(f"/api/v1/keys/users/{users[0]}/verify"), 1)
    assert checked.status_code == 200, checked.text
    assert checked.json()["provider"] == "connector"
    assert connector.served == 1
    status = owner.get("/api/v1/keys/status").json()
    assert status["connected"] is True
    assert status["connectors"][0]["host"] == "dc-1"


@pytest.mark.parametrize(
    ("hello", "code"),
    [
        ({"type": "ping"}, 4400),
        ({"type": "hello", "kcvs": []}, 4400),
        ({"type": "hello", "kcvs": ["a"], "current_kcv": "b"}, 4400),
    ],
)
def test_a_bad_hello_is_refused(
    owner: TestClient, socket_factory: Any, hello: dict[str, Any], code: int
) -> None:
    ws = socket_factory(_connector_token(owner))
    ws.send_json(hello)
    assert ws.receive_json()["code"] == "invalid_input"
    assert ws.receive()["code"] == code


def test_an_unknown_token_is_refused_with_4401(owner: TestClient, socket_factory: Any) -> None:
    ws = socket_factory("fkc_unknown")
    answer = _hello(ws, _ekey())
    assert answer["code"] == "connector_token_invalid"
    assert "fleetkeep keys connector-token create" in answer["message"]
    assert ws.receive()["code"] == 4401


def test_a_revoked_token_is_disconnected_while_connected(
    owner: TestClient, socket_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(endpoint, "TOUCH_EVERY", 0.05)
    token = _connector_token(owner)
    ws = socket_factory(token)
    assert _hello(ws, _ekey())["type"] == "welcome"
    token_id = owner.get("/api/v1/keys/connector-tokens").json()[0]["id"]
    owner.delete(f"/api/v1/keys/connector-tokens/{token_id}")
    closed = ws.receive()
    assert closed["type"] == "websocket.close"
    assert closed["code"] == 4401
