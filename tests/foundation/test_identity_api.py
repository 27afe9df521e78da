"""The identity REST API, as an admin tool would use it, on both databases."""

from __future__ import annotations

from fastapi.testclient import TestClient


def make_profile(c: TestClient, name: str = "Laptops", **extra: object) -> int:
    r = c.post("/api/v1/profiles", json={"name": name, **extra})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def make_region(c: TestClient, name: str = "local") -> int:
    r = c.post("/api/v1/storage-regions", json={"name": name, "store_url": "file:///srv/fk"})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def make_user(c: TestClient, email: str, profile: int, region: int, **extra: object) -> dict:
    r = c.post(
        "/api/v1/users",
        json={"email": email, "profile_id": profile, "storage_region_id": region, **extra},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def user_count(c: TestClient) -> int:
    return len(c.get("/api/v1/users", params={"limit": 1000}).json()["items"])


def test_user_takes_the_profile_default_quota_unless_given(owner: TestClient) -> None:
    profile = make_profile(owner, default_quota={"value": 50, "unit": "GB"})
    region = make_region(owner)
    ann = make_user(owner, "ann@example.com", profile, region)
    bob = make_user(owner, "bob@example.com", profile, region, quota={"value": 0, "unit": "GB"})
    assert ann["quota"] == {"value": 50, "unit": "GB"}
    assert ann["quota_bytes"] == 50 * 1024**3
    assert bob["quota_bytes"] == 0
    got = owner.get(f"/api/v1/users/{ann['id']}").json()
    assert got["email"] == "ann@example.com"
    assert got["state"] == "active"


def test_email_is_unique_case_insensitively_and_the_refusal_changes_nothing(
    owner: TestClient,
) -> None:
    profile, region = make_profile(owner), make_region(owner)
    make_user(owner, "Ann@Example.com", profile, region)
    r = owner.post(
        "/api/v1/users",
        json={"email": "ann@EXAMPLE.com", "profile_id": profile, "storage_region_id": region},
    )
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == "email_taken"
    assert body["field"] == "email"
    assert user_count(owner) == 1


def test_bad_input_gets_precise_problems_and_changes_nothing(owner: TestClient) -> None:
    profile, region = make_profile(owner), make_region(owner)
    bad = [
        (b'{"email": "x@example.com",', 400, "malformed_json"),
        (
            b'{"email": "x@example.com", "profile_id": 1, "storage_region_id": 1, "x": 1}',
            422,
            "invalid_input",
        ),
        (
            b'{"email": "x@example.com", "profile_id": "one", "storage_region_id": 1}',
            422,
            "invalid_input",
        ),
        (
            b'{"email": "not-an-address", "profile_id": %d, "storage_region_id": %d}'
            % (profile, region),
            422,
            "invalid_input",
        ),
        (
            b'{"email": "x@example.com", "profile_id": 999, "storage_region_id": %d}' % region,
            404,
            "not_found",
        ),
    ]
    for body, status, code in bad:
        r = owner.post("/api/v1/users", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, (body, r.text)
        assert r.json()["code"] == code, (body, r.text)
    assert owner.get("/api/v1/users/424242").status_code == 404
    assert user_count(owner) == 0


def test_oversized_body_is_refused_with_413(owner: TestClient) -> None:
    r = owner.post("/api/v1/profiles", json={"name": "x", "description": "a" * 2_000_000})
    assert r.status_code == 413
    assert r.json()["code"] == "body_too_large"
    assert owner.get("/api/v1/profiles").json() == []


def test_lifecycle_transitions_and_illegal_ones(owner: TestClient) -> None:
    user = make_user(owner, "ann@example.com", make_profile(owner), make_region(owner))
    uid = user["id"]
    r = owner.post(f"/api/v1/users/{uid}/preserve")
    assert r.json()["state"] == "preserved"
    assert r.json()["preserved_by"] == "admin"
    assert owner.post(f"/api/v1/users/{uid}/preserve").status_code == 409
    assert owner.post(f"/api/v1/users/{uid}/restore").json()["state"] == "active"
    assert owner.delete(f"/api/v1/users/{uid}").json()["state"] == "deleted"
    r = owner.post(f"/api/v1/users/{uid}/preserve")
    assert r.status_code == 409
    assert r.json()["code"] == "illegal_transition"
    assert owner.post(f"/api/v1/users/{uid}/restore").json()["state"] == "active"


def test_cursor_pagination_and_filters(owner: TestClient) -> None:
    profile, region = make_profile(owner), make_region(owner)
    other = make_profile(owner, "Servers")
    ids = [
        make_user(owner, f"user{i:02d}@example.com", profile, region, display_name=f"User {i}")[
            "id"
        ]
        for i in range(25)
    ]
    make_user(owner, "zed@corp.example", other, region, display_name="Zed Admin")
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 10, "profile_id": profile}
        if cursor:
            params["cursor"] = cursor
        page = owner.get("/api/v1/users", params=params).json()
        seen += [u["id"] for u in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids
    assert [
        u["email"] for u in owner.get("/api/v1/users", params={"q": "ZED"}).json()["items"]
    ] == ["zed@corp.example"]
    owner.post(f"/api/v1/users/{ids[3]}/preserve")
    preserved = owner.get("/api/v1/users", params={"state": "preserved"}).json()["items"]
    assert [u["id"] for u in preserved] == [ids[3]]
    assert owner.get("/api/v1/users", params={"cursor": "garbage!"}).status_code == 422
    assert owner.get("/api/v1/users", params={"state": "gone"}).status_code == 422


def test_every_change_is_audited_with_before_and_after(owner: TestClient) -> None:
    user = make_user(owner, "ann@example.com", make_profile(owner), make_region(owner))
    owner.patch(f"/api/v1/users/{user['id']}", json={"display_name": "Ann Lee"})
    events = owner.get("/api/v1/audit", params={"target_type": "user"}).json()["items"]
    update = next(e for e in events if e["action"] == "user.update")
    assert update["before"]["display_name"] == ""
    assert update["after"]["display_name"] == "Ann Lee"
    assert update["actor"] == "admin:owner@example.com"
    assert update["request_id"]
    assert any(e["action"] == "user.create" for e in events)


def test_profile_or_region_in_use_cannot_be_deleted(owner: TestClient) -> None:
    profile, region = make_profile(owner), make_region(owner)
    make_user(owner, "ann@example.com", profile, region)
    assert owner.delete(f"/api/v1/profiles/{profile}").json()["code"] == "profile_in_use"
    assert owner.delete(f"/api/v1/storage-regions/{region}").json()["code"] == "region_in_use"
    assert owner.post("/api/v1/profiles", json={"name": "Laptops"}).status_code == 409
    assert (
        owner.post(
            "/api/v1/storage-regions", json={"name": "x", "store_url": "ftp://nope"}
        ).status_code
        == 422
    )
