"""A real key connector process against a real ``fleetkeep serve`` process."""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from fleetkeep.db import make_engine, make_sessionmaker
from fleetkeep.keys.keyfile import load_keys
from fleetkeep.keys.models import WrappedKey
from fleetkeep.keys.service import user_context
from fleetkeep.keys.wrapping import UnwrapFailed, unwrap_dek
from tests.keys.scanning import database_bytes, find_secrets
from tests.support.connectors import (
    FULL,
    ConnectorProcess,
    connected,
    connector_token,
    new_key_file,
)
from tests.support.servers import BIN, ServerProcess, start_server, wait_ready
from tests.support.waits import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """For the process-level checks, which do not depend on the database back end."""
    proc = start_server(tmp_path / "server", f"sqlite:///{tmp_path / 'server' / 'fleetkeep.db'}")
    yield proc
    proc.stop()


@pytest.fixture
def connectors(tmp_path: Path) -> Iterator[list[ConnectorProcess]]:
    started: list[ConnectorProcess] = []
    yield started
    for connector in started:
        connector.kill()


def _key_alerts(api: httpx.Client) -> list[dict[str, object]]:
    items = api.get("/api/v1/alerts", params={"status": "all"}).json()["items"]
    return [a for a in items if a["type"] == "key_provider_not_connected"]


def _make_users(api: httpx.Client, count: int, prefix: str) -> list[int]:
    profile = api.post("/api/v1/profiles", json={"name": f"{prefix}-p"}).json()["id"]
    region = api.post(
        "/api/v1/storage-regions", json={"name": f"{prefix}-r", "store_url": "file:///tmp/fk-e2e"}
    ).json()["id"]
    return [
        api.post(
            "/api/v1/users",
            json={
                "email": f"{prefix}{i}@example.com",
                "profile_id": profile,
                "storage_region_id": region,
            },
        ).json()["id"]
        for i in range(count)
    ]


def _server_ekeys(server: ServerProcess) -> dict[str, bytes]:
    return {f"local ekey {k.kcv}": k.key for k in load_keys(server.data_dir / "keys" / "ekey.json")}


def _deks(database_url: str, key_file: Path) -> dict[str, bytes]:
    """Unwrap every stored DEK with the customer's key file (the test plays the customer)."""
    keys = load_keys(key_file)
    engine = make_engine(database_url)
    found = {}
    with make_sessionmaker(engine)() as session:
        for row in session.scalars(select(WrappedKey)):
            for key in keys:
                try:
                    found[f"dek of user {row.user_id}"] = unwrap_dek(
                        key.key, row.wrapped, user_context(row.user_id)
                    )
                except UnwrapFailed:
                    continue
    engine.dispose()
    return found


def test_connector_serves_dies_mid_flight_alerts_and_heals_without_restart(
    server: ServerProcess, connectors: list[ConnectorProcess], tmp_path: Path
) -> None:
    api = server.admin_client()
    key_file = new_key_file(tmp_path / "customer" / "ekey.json")
    token = connector_token(api)
    first = ConnectorProcess(server, key_file, token, tmp_path / "connector-1.log").start()
    standby = ConnectorProcess(server, key_file, token, tmp_path / "connector-0.log").start()
    connectors.extend([first, standby])
    wait_for(connected(api, 2), "two connectors to connect")

    rotated = api.post("/api/v1/keys/rotate", json={"provider": "connector"})
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["provider"] == "connector"
    users = _make_users(api, 160, "e2e")
    for user in users[:5]:
        checked = api.post(f"/api/v1/keys/users/{user}/verify")
        assert checked.status_code == 200, checked.text
        assert checked.json()["provider"] == "connector"
    status = api.get("/api/v1/keys/status").json()
    assert status["connected"] is True
    assert [c["holds_active_key"] for c in status["connectors"]] == [True, True]

    def verify_all(batch: list[int], kill: ConnectorProcess) -> list[httpx.Response]:
        """Verify ``batch`` from 6 threads and SIGKILL ``kill`` while requests are in flight."""
        done: list[int] = []

        def verify(user: int) -> httpx.Response:
            with httpx.Client(base_url=server.url, headers=api.headers, timeout=30) as client:
                response = client.post(f"/api/v1/keys/users/{user}/verify")
            done.append(user)
            return response

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(verify, u) for u in batch]
            wait_for(lambda: len(done) >= 10, "the first answers")
            kill.kill()
            return [f.result() for f in futures]

    # One of two instances dies: its requests fail over to the other, nobody notices.
    responses = verify_all(users[5:60], first)
    assert {r.status_code for r in responses} == {200}
    assert _key_alerts(api) == []

    # The last one dies: in-flight and later requests fail fast with the clear error.
    responses = verify_all(users[60:], standby)
    codes = {(r.status_code, r.json().get("code")) for r in responses}
    assert codes <= {(200, None), (503, "key_provider_not_connected")}, codes
    failed = [r for r in responses if r.status_code == 503]
    assert failed, "no request failed after the last connector was killed"
    assert "connector" in failed[-1].json()["detail"]

    alerts = _key_alerts(api)
    assert len(alerts) == 1
    assert alerts[0]["status"] == "open"
    assert alerts[0]["message"] == "Key connector not connected"
    assert api.get("/api/v1/keys/status").json()["connected"] is False

    # Restart: the server heals by itself and resolves the alert.
    second = ConnectorProcess(server, key_file, token, tmp_path / "connector-2.log").start()
    connectors.append(second)
    wait_for(connected(api), "the connector to reconnect")
    for user in users:
        checked = api.post(f"/api/v1/keys/users/{user}/verify")
        assert checked.status_code == 200, checked.text
    alerts = _key_alerts(api)
    assert [a["status"] for a in alerts] == ["resolved"]

    # Nothing that holds key material reached a log or the database.
    deks = _deks(server.database_url, key_file)
    assert len(deks) == len(users)
    secrets = {
        **deks,
        **_server_ekeys(server),
        **{f"connector ekey {k.kcv}": k.key for k in load_keys(key_file)},
    }
    second.kill()
    server.stop()
    for name, text in [
        ("server log", server.log()),
        ("connector log", first.log()),
        ("standby connector log", standby.log()),
        ("connector log 2", second.log()),
    ]:
        assert find_secrets(text.encode(), secrets) == [], name
    assert find_secrets(database_bytes(server.database_url), secrets) == []


def test_without_the_connector_a_fresh_server_with_only_the_database_decrypts_nothing(
    sqlite_server: ServerProcess, connectors: list[ConnectorProcess], tmp_path: Path
) -> None:
    api = sqlite_server.admin_client()
    key_file = new_key_file(tmp_path / "customer" / "ekey.json")
    connector = ConnectorProcess(
        sqlite_server, key_file, connector_token(api), tmp_path / "c.log"
    ).start()
    connectors.append(connector)
    wait_for(connected(api), "the connector to connect")
    users = _make_users(api, 3, "only-db")
    assert api.post("/api/v1/keys/rotate", json={"provider": "connector"}).status_code == 200
    for user in users:
        assert api.post(f"/api/v1/keys/users/{user}/verify").status_code == 200
    local_ekeys = _server_ekeys(sqlite_server)
    key_file_mode = (sqlite_server.data_dir / "keys" / "ekey.json").stat().st_mode
    assert stat.S_IMODE(key_file_mode) == 0o600, "fleetkeep init must create the key file 0600"
    connector.kill()
    sqlite_server.stop()

    fresh = start_server(tmp_path / "fresh", sqlite_server.database_url, init=False, jobs=False)
    try:
        fresh_api = fresh.admin_client()
        for user in users:
            answer = fresh_api.post(f"/api/v1/keys/users/{user}/verify")
            assert answer.status_code == 503
            assert answer.json()["code"] == "key_provider_not_connected"
    finally:
        fresh.stop()
    # Not even the old local key file opens them: they are wrapped by the customer's key.
    engine = make_engine(sqlite_server.database_url)
    with make_sessionmaker(engine)() as session:
        rows = list(session.scalars(select(WrappedKey)))
    engine.dispose()
    assert len(rows) == len(users)
    for row in rows:
        for key in local_ekeys.values():
            with pytest.raises(UnwrapFailed):
                unwrap_dek(key, row.wrapped, user_context(row.user_id))


def test_bad_tokens_and_a_different_key_are_refused_with_clear_errors(
    sqlite_server: ServerProcess, connectors: list[ConnectorProcess], tmp_path: Path
) -> None:
    api = sqlite_server.admin_client()
    key_file = new_key_file(tmp_path / "customer" / "ekey.json")
    wrong = ConnectorProcess(
        sqlite_server, key_file, "fkc_not-a-real-token", tmp_path / "w.log", command=FULL
    ).start()
    connectors.append(wrong)
    assert wrong.wait_exit(60) == 3
    assert "connector token is unknown or revoked" in wrong.log()

    token = connector_token(api)
    good = ConnectorProcess(sqlite_server, key_file, token, tmp_path / "g.log").start()
    connectors.append(good)
    wait_for(connected(api), "the connector to connect")
    assert api.post("/api/v1/keys/rotate", json={"provider": "connector"}).status_code == 200

    other_key = new_key_file(tmp_path / "elsewhere" / "ekey.json")
    stranger = ConnectorProcess(sqlite_server, other_key, token, tmp_path / "s.log").start()
    connectors.append(stranger)
    assert stranger.wait_exit() == 4
    assert "it holds a different organization key" in stranger.log()

    token_id = api.get("/api/v1/keys/connector-tokens").json()[-1]["id"]
    assert api.delete(f"/api/v1/keys/connector-tokens/{token_id}").status_code == 200
    revoked = ConnectorProcess(sqlite_server, key_file, token, tmp_path / "r.log").start()
    connectors.append(revoked)
    assert revoked.wait_exit() == 3


def test_the_connector_reconnects_by_itself_when_the_server_restarts(
    sqlite_server: ServerProcess, connectors: list[ConnectorProcess], tmp_path: Path
) -> None:
    api = sqlite_server.admin_client()
    key_file = new_key_file(tmp_path / "customer" / "ekey.json")
    connector = ConnectorProcess(
        sqlite_server, key_file, connector_token(api), tmp_path / "c.log"
    ).start()
    connectors.append(connector)
    wait_for(connected(api), "the connector to connect")
    [user] = _make_users(api, 1, "restart")
    assert api.post("/api/v1/keys/rotate", json={"provider": "connector"}).status_code == 200
    assert api.post(f"/api/v1/keys/users/{user}/verify").status_code == 200

    # The server goes away (an upgrade, a crash) and comes back on the same address.
    sqlite_server.stop()
    wait_for(lambda: "retrying in" in connector.log(), "the connector to notice")
    with sqlite_server.log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(BIN / "fleetkeep"), "serve"],
            env=sqlite_server.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    sqlite_server.process = process
    wait_ready(sqlite_server)
    api = sqlite_server.admin_client()
    wait_for(connected(api), "the connector to reconnect on its own")
    answer = api.post(f"/api/v1/keys/users/{user}/verify")
    assert answer.status_code == 200, answer.text
    assert connector.process is not None
    assert connector.process.poll() is None
