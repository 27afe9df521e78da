"""Sign-in, lockout, API tokens and role enforcement on every admin route."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from tests.support.servers import ADMIN_EMAIL, ADMIN_PASSWORD

WRITE_METHODS = {"post", "put", "patch", "delete"}


def _concrete(path: str) -> str:
    """A real URL for a path template: every path parameter becomes 1."""
    return re.sub(r"\{[^}]+\}", "1", path)


def test_read_only_token_cannot_write_anywhere_in_the_api(owner: TestClient) -> None:
    r = owner.post("/api/v1/tokens", json={"label": "dashboards", "role": "read-only"})
    assert r.status_code == 201
    read_only = {"Authorization": f"Bearer {r.json()['token']}"}
    spec = owner.get("/api/openapi.json").json()
    checked = 0
    for path, methods in spec["paths"].items():
        if not path.startswith("/api/v1") or path.startswith("/api/v1/auth/"):
            continue
        for method in methods:
            url = _concrete(path)
            if method in WRITE_METHODS:
                resp = owner.request(method.upper(), url, headers=read_only, json={})
                assert resp.status_code == 403, (method, path, resp.text)
                assert resp.json()["code"] == "role_forbidden"
                checked += 1
            else:
                resp = owner.request(method.upper(), url, headers=read_only)
                assert resp.status_code != 403, (method, path)
    assert checked >= 10


def test_every_admin_route_needs_a_token(client: TestClient) -> None:
    spec = client.get("/api/openapi.json").json()
    for path, methods in spec["paths"].items():
        if not path.startswith("/api/v1") or path.startswith("/api/v1/auth/"):
            continue
        for method in methods:
            resp = client.request(method.upper(), _concrete(path), json={})
            assert resp.status_code == 401, (method, path, resp.text)


def test_admin_role_cannot_do_owner_things(owner: TestClient) -> None:
    r = owner.post("/api/v1/tokens", json={"label": "ops", "role": "admin"})
    admin = {"Authorization": f"Bearer {r.json()['token']}"}
    r = owner.post(
        "/api/v1/admins",
        headers=admin,
        json={"email": "eve@example.com", "password": "x" * 12, "role": "owner"},
    )
    assert r.status_code == 403
    assert owner.post("/api/v1/profiles", headers=admin, json={"name": "P"}).status_code == 201


def test_api_token_is_shown_once_stored_hashed_and_revocable(
    owner: TestClient, clean_engine: Engine
) -> None:
    created = owner.post("/api/v1/tokens", json={"label": "ci"}).json()
    secret = created["token"]
    assert secret.startswith("fka_")
    assert len(secret) > 40
    listed = owner.get("/api/v1/tokens").json()
    assert all("token" not in t for t in listed)
    with clean_engine.connect() as conn:
        dump = " ".join(str(row) for row in conn.execute(text("SELECT * FROM api_tokens")))
    assert secret not in dump
    assert secret[4:] not in dump
    headers = {"Authorization": f"Bearer {secret}"}
    assert owner.get("/api/v1/me", headers=headers).status_code == 200
    used = next(t for t in owner.get("/api/v1/tokens").json() if t["id"] == created["id"])
    assert used["last_used_at"] is not None
    assert owner.delete(f"/api/v1/tokens/{created['id']}").status_code == 200
    r = owner.get("/api/v1/me", headers=headers)
    assert r.status_code == 401
    assert r.json()["code"] == "invalid_token"


def test_token_cannot_exceed_its_admins_role(owner: TestClient) -> None:
    owner.post(
        "/api/v1/admins",
        json={"email": "ro@example.com", "password": "p" * 14, "role": "read-only"},
    )
    signed = owner.post(
        "/api/v1/auth/sign-in", json={"email": "ro@example.com", "password": "p" * 14}
    ).json()
    headers = {"Authorization": f"Bearer {signed['token']}"}
    r = owner.post("/api/v1/tokens", headers=headers, json={"label": "x", "role": "owner"})
    assert r.status_code == 403


def test_password_sign_in_locks_out_after_repeated_failures(owner: TestClient) -> None:
    for _ in range(5):
        r = owner.post("/api/v1/auth/sign-in", json={"email": ADMIN_EMAIL, "password": "wrong"})
        assert r.status_code == 401
    r = owner.post("/api/v1/auth/sign-in", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) > 0
    assert r.json()["code"] == "login_locked"
    failures = owner.get("/api/v1/audit", params={"action": "admin.sign_in_failed"}).json()
    assert len(failures["items"]) == 5
