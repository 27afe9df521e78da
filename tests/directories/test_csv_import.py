"""CSV import: validated as a whole, rejected rows reported by line, valid rows applied once."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetkeep.directories import csv_import
from tests.support.servers import ServerProcess, run_cli


@pytest.fixture
def org(owner: TestClient) -> dict[str, int]:
    staff = owner.post("/api/v1/profiles", json={"name": "Staff"}).json()
    owner.post("/api/v1/profiles", json={"name": "Exec"}).raise_for_status()
    region = owner.post(
        "/api/v1/storage-regions", json={"name": "eu", "store_url": "file:///tmp/fk-eu"}
    ).json()
    owner.post(
        "/api/v1/storage-regions", json={"name": "us", "store_url": "file:///tmp/fk-us"}
    ).raise_for_status()
    return {"profile": staff["id"], "region": region["id"]}


def upload(client: TestClient, data: bytes, **form: str) -> Any:
    return client.post(
        "/api/v1/imports", files={"file": ("people.csv", data, "text/csv")}, data=form
    )


def users(client: TestClient) -> dict[str, dict[str, Any]]:
    items = client.get("/api/v1/users", params={"limit": 500}).json()["items"]
    return {u["email"]: u for u in items}


GOOD = (
    b"email,username,name,profile,region,quota\n"
    b"ann@example.com,ann,Ann A,Staff,eu,50GB\n"
    b"bob@example.com,bob,Bob B,Exec,us,\n"
    b'cat@example.com,cat,"Cat, the C",Staff,eu,50 GB\n'
)


def test_valid_file_creates_users_and_reimport_changes_nothing(
    owner: TestClient, org: dict[str, int]
) -> None:
    first = upload(owner, GOOD)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["status"] == "succeeded"
    assert body["counts"]["create"] == 3
    assert body["rejected"] == 0
    found = users(owner)
    assert found["cat@example.com"]["display_name"] == "Cat, the C"
    assert found["ann@example.com"]["quota"] == {"value": 50, "unit": "GB"}
    assert found["bob@example.com"]["storage_region_id"] != org["region"]
    audit_before = len(owner.get("/api/v1/audit", params={"limit": 500}).json()["items"])

    again = upload(owner, GOOD).json()
    assert again["counts"]["create"] == 0
    assert again["counts"]["update"] == 0
    assert again["counts"]["unchanged"] == 3
    assert users(owner) == found
    audit_after = owner.get("/api/v1/audit", params={"limit": 500}).json()["items"]
    assert not [
        e for e in audit_after[: len(audit_after) - audit_before] if e["action"].startswith("user.")
    ]


def test_bad_rows_are_reported_by_line_and_valid_rows_applied(
    owner: TestClient, org: dict[str, int]
) -> None:
    data = (
        b"email,name,profile,region,quota\n"
        b"ok@example.com,OK,Staff,eu,\n"
        b"not-an-email,X,Staff,eu,\n"
        b"dup@example.com,D1,Staff,eu,\n"
        b"DUP@example.com,D2,Staff,eu,\n"
        b"q@example.com,Q,Staff,eu,lots\n"
        b"p@example.com,P,Nobody,eu,\n"
        b",,Staff,eu,\n"
    )
    response = upload(owner, data)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["counts"]["create"] == 2
    reasons = {e["line"]: e["reason"] for e in body["rejected_rows"]}
    assert set(reasons) == {3, 5, 6, 7, 8}
    assert "not a valid address" in reasons[3]
    assert "already on line 4" in reasons[5]
    assert "quota" in reasons[6]
    assert "no profile named 'Nobody'" in reasons[7]
    assert "email is empty" in reasons[8]
    assert set(users(owner)) == {"ok@example.com", "dup@example.com"}

    errors = owner.get(f"/api/v1/imports/{body['id']}/errors.csv")
    assert errors.status_code == 200
    assert errors.headers["content-type"].startswith("text/csv")
    lines = errors.text.strip().splitlines()
    assert lines[0] == "line,email,reason"
    assert lines[1].startswith("3,not-an-email,")
    assert len(lines) == 6


def test_users_of_another_source_are_not_taken_over(owner: TestClient, org: dict[str, int]) -> None:
    owner.post(
        "/api/v1/users",
        json={
            "email": "ann@example.com",
            "profile_id": org["profile"],
            "storage_region_id": org["region"],
        },
    ).raise_for_status()
    body = upload(owner, GOOD).json()
    assert body["counts"]["create"] == 2
    assert body["rejected_rows"] == [
        {
            "line": 2,
            "email": "ann@example.com",
            "reason": "a user with this email already exists and belongs to another source",
        }
    ]
    assert users(owner)["ann@example.com"]["source"] == "manual"


def test_dry_run_previews_and_changes_no_user(owner: TestClient, org: dict[str, int]) -> None:
    body = upload(owner, GOOD, dry_run="true").json()
    assert body["status"] == "dry-run"
    assert body["counts"]["create"] == 3
    assert users(owner) == {}


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"name,profile\nAnn,Staff\n", "no 'email' column"),
        (b"email,colour\nann@example.com,red\n", "unknown column(s) 'colour'"),
        (b"email,email\na@example.com,b@example.com\n", "more than once"),
        (b"email\n", "no rows"),
        ("email,name\nann@example.com,Zo\xe9\n".encode("latin-1"), "line 2, column 19"),
    ],
    ids=["empty", "no-email", "unknown-column", "repeated-column", "header-only", "latin-1"],
)
def test_file_level_problems_refuse_the_whole_import(
    owner: TestClient, org: dict[str, int], data: bytes, fragment: str
) -> None:
    response = upload(owner, data)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "import_refused"
    assert fragment in response.json()["detail"]
    assert users(owner) == {}


def test_default_profile_and_region_fill_empty_cells(
    owner: TestClient, org: dict[str, int]
) -> None:
    body = upload(owner, b"email\nzed@example.com\n", profile="Exec", region="us").json()
    assert body["counts"]["create"] == 1
    missing = upload(owner, b"email\nyan@example.com\n").json()
    assert missing["rejected_rows"][0]["reason"].startswith("no profile")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_parse_never_fails_with_anything_but_a_precise_refusal(data: bytes) -> None:
    try:
        parsed = csv_import.parse(data, default_profile="P", default_region="R")
    except csv_import.ImportRefused as exc:
        refusal = exc.detail
    else:
        refusal = None
    if refusal is not None:
        assert refusal
        return
    for error in parsed.errors:
        assert error["line"] >= 2
        assert error["reason"]


def test_cli_import_with_dry_run_then_for_real(server: ServerProcess, tmp_path: Any) -> None:
    with server.admin_client() as admin:
        admin.post("/api/v1/profiles", json={"name": "Staff"}).raise_for_status()
        admin.post("/api/v1/profiles", json={"name": "Exec"}).raise_for_status()
        for name in ("eu", "us"):
            admin.post(
                "/api/v1/storage-regions", json={"name": name, "store_url": f"file:///tmp/{name}"}
            ).raise_for_status()
    path = tmp_path / "people.csv"
    path.write_bytes(GOOD + b"broken,,Staff,eu,\n")
    dry = run_cli(["users", "import", str(path), "--dry-run"], server.env, check=False)
    assert dry.returncode == 3, dry.stdout + dry.stderr
    assert "would create 3" in dry.stdout
    assert "Rejected rows" in dry.stdout
    real = run_cli(["users", "import", str(path)], server.env, check=False)
    assert "did create 3" in real.stdout
    with server.admin_client() as admin:
        emails = {u["email"] for u in admin.get("/api/v1/users").json()["items"]}
    assert emails == {"ann@example.com", "bob@example.com", "cat@example.com"}
