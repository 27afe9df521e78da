"""A real ``fleetkeep serve`` process, used over HTTP and in a real browser, on both databases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright

from tests.conftest import create_pg_database, drop_pg_database
from tests.support.servers import ServerProcess, fleetkeep_env, run_cli, start_server
from tests.support.waits import wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_admin_from_init_creates_profile_region_and_user_over_http(server: ServerProcess) -> None:
    with server.admin_client() as api:
        profile = api.post(
            "/api/v1/profiles",
            json={"name": "Laptops", "default_quota": {"value": 20, "unit": "GB"}},
        )
        region = api.post(
            "/api/v1/storage-regions",
            json={"name": "eu-1", "region": "eu", "store_url": "file:///srv/eu"},
        )
        assert profile.status_code == 201
        assert region.status_code == 201
        user = api.post(
            "/api/v1/users",
            json={
                "email": "ann@example.com",
                "display_name": "Ann Lee",
                "profile_id": profile.json()["id"],
                "storage_region_id": region.json()["id"],
            },
        )
        assert user.status_code == 201, user.text
        got = api.get(f"/api/v1/users/{user.json()['id']}").json()
        assert got["display_name"] == "Ann Lee"
        assert got["quota"] == {"value": 20, "unit": "GB"}
        assert api.get("/api/v1/storage-regions").json()[0]["name"] == "eu-1"
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["status"] == "ok"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'fleetkeep_users{state="active"} 1.0' in metrics
    assert "fleetkeep_http_requests_total" in metrics


def test_logs_are_structured_carry_request_ids_and_no_secrets(server: ServerProcess) -> None:
    with server.admin_client() as api:
        created = api.post("/api/v1/tokens", json={"label": "probe"}).json()
        response = api.get("/api/v1/me")
    rid = response.headers["x-request-id"]

    def logged() -> bool:
        # The access line is written as the response finishes: it may land just after we read.
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        return any(
            line.get("request_id") == rid and line.get("path") == "/api/v1/me" for line in lines
        )

    wait_for(logged, "the request's log line", timeout=10)
    text = server.log()
    assert server.admin_password not in text
    assert created["token"] not in text


def test_cli_lists_what_the_api_created(server: ServerProcess) -> None:
    with server.admin_client() as api:
        p = api.post("/api/v1/profiles", json={"name": "Desktops"}).json()["id"]
        r = api.post("/api/v1/storage-regions", json={"name": "r", "store_url": "file:///x"})
        api.post(
            "/api/v1/users",
            json={"email": "cli@example.com", "profile_id": p, "storage_region_id": r.json()["id"]},
        )
    out = run_cli(["users", "list"], server.env).stdout
    assert "cli@example.com" in out
    run_cli(["users", "preserve", "cli@example.com"], server.env)
    assert "preserved" in run_cli(["users", "list", "--state", "preserved"], server.env).stdout
    refused = run_cli(["users", "preserve", "cli@example.com"], server.env, check=False)
    assert refused.returncode == 1
    assert "already preserved" in refused.stderr
    audit = run_cli(["audit", "--action", "user.preserve"], server.env).stdout
    assert "cli:" in audit


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        yield _launch(pw)


def _launch(pw: Playwright) -> Browser:
    return pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def test_console_sign_in_dashboard_and_users_in_a_real_browser(
    server: ServerProcess, browser: Browser, tmp_path: Path
) -> None:
    with server.admin_client() as api:
        p = api.post("/api/v1/profiles", json={"name": "Laptops"}).json()["id"]
        r = api.post("/api/v1/storage-regions", json={"name": "local", "store_url": "file:///x"})
        for name in ("ann", "bob", "cy"):
            api.post(
                "/api/v1/users",
                json={
                    "email": f"{name}@example.com",
                    "profile_id": p,
                    "storage_region_id": r.json()["id"],
                },
            )
        api.post("/api/v1/users/2/preserve")
    page = browser.new_page()
    page.goto(server.url + "/")
    assert page.url.endswith("/sign-in")
    page.fill("#email", server.admin_email)
    page.fill("#password", "wrong password")
    page.click("button[type=submit]")
    assert "wrong email or password" in page.inner_text("[role=alert]")
    page.fill("#password", server.admin_password)
    page.click("button[type=submit]")
    page.wait_for_url(server.url + "/")
    assert page.inner_text("#users-active") == "2"
    assert page.inner_text("#users-preserved") == "1"
    page.screenshot(path=str(tmp_path / "dashboard.png"))
    page.click("text=Users")
    page.wait_for_url(server.url + "/users")
    page.fill("input[name=q]", "bob")
    page.click("text=Filter")
    page.wait_for_url("**/users?q=bob**")
    rows = page.locator("#users tr").all_inner_texts()
    assert len(rows) == 2
    assert "bob@example.com" in rows[1]
    assert "preserved" in rows[1]
    page.click("text=Sign out")
    page.goto(server.url + "/users")
    assert page.url.endswith("/sign-in")


def test_init_is_idempotent_and_invalid_settings_stop_start_up(tmp_path: Path) -> None:
    env = fleetkeep_env(tmp_path / "d", f"sqlite:///{tmp_path / 'd' / 'fk.db'}")
    first = run_cli(["init"], env).stdout
    assert "password:" in first
    again = run_cli(["init"], env).stdout
    assert "already initialised" in again
    assert "password" not in again
    bad = run_cli(["serve"], {**env, "FLEETKEEP_LISTEN_PORT": "eighty"}, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0
    assert "listen_port" in bad.stderr
    toml = tmp_path / "fk.toml"
    toml.write_text("listen_port = 99999\n")
    bad = run_cli(["serve"], {**env, "FLEETKEEP_CONFIG": str(toml)}, check=False)
    assert bad.returncode == 2
    assert "listen_port" in bad.stderr


def test_serve_workers_share_one_port_on_postgresql_and_sqlite_keeps_one(
    database_url: str, tmp_path: Path
) -> None:
    if database_url.startswith("sqlite"):
        env = fleetkeep_env(tmp_path / "data", f"sqlite:///{tmp_path / 'data' / 'fk.db'}")
        result = run_cli(["serve", "--workers", "2"], env, check=False)
        assert result.returncode == 2
        assert "--workers needs PostgreSQL" in result.stderr
        return
    url = create_pg_database("fk_workers")
    server = start_server(tmp_path / "server", url, jobs=False, serve_args=["--workers", "2"])
    try:
        with server.admin_client() as api:
            for _ in range(6):
                assert api.get("/api/v1/profiles").status_code == 200
    finally:
        server.stop()
        drop_pg_database(url)
    assert server.process.returncode is not None
