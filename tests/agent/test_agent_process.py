"""Real ``fleetkeep-agent`` processes activating against a real ``fleetkeep serve`` over HTTP."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import BIN, ServerProcess, run_cli


def setup_org(server: ServerProcess, *emails: str) -> tuple[httpx.Client, str, dict[str, int]]:
    admin = server.admin_client()
    profile = admin.post("/api/v1/profiles", json={"name": "Laptops"}).json()["id"]
    region = admin.post(
        "/api/v1/storage-regions", json={"name": "local", "store_url": "file:///srv/fk"}
    ).json()["id"]
    users = {}
    for email in emails:
        r = admin.post(
            "/api/v1/users",
            json={"email": email, "profile_id": profile, "storage_region_id": region},
        )
        assert r.status_code == 201, r.text
        users[email] = r.json()["id"]
    token = admin.post("/api/v1/deployment-tokens", json={"label": "rollout"}).json()["token"]
    return admin, token, users


def agent_env(state_dir: Path, hostname: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETKEEP_")}
    env.update(FLEETKEEP_AGENT_DIR=str(state_dir), FLEETKEEP_HOSTNAME=hostname)
    env.update(FLEETKEEP_SERIAL=f"SN-{hostname}", FLEETKEEP_HARDWARE_UUID="")
    env.update(extra)
    return env


def agent(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "fleetkeep-agent"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_exit(process: subprocess.Popen[str], timeout: float) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("the agent did not stop") from None


def test_agent_activates_keeps_its_token_private_and_reuses_it(
    server: ServerProcess, tmp_path: Path
) -> None:
    admin, token, _ = setup_org(server, "ann@example.com")
    env = agent_env(tmp_path / "ann", "ANN-PC")
    done = agent(
        "activate", "--server", server.url, "--token", token, "--email", "ann@example.com", env=env
    )
    assert done.returncode == 0, done.stderr
    assert "activated as device" in done.stdout
    assert token not in done.stdout + done.stderr
    state = tmp_path / "ann" / "device.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    stored: dict[str, Any] = json.loads(state.read_text())
    assert stored["device_token"].startswith("fkd_")
    status = agent("status", "--json", env=env)
    info = json.loads(status.stdout)
    assert info["device_id"] == stored["device_id"]
    assert info["user"] == "ann@example.com"
    assert stored["device_token"] not in status.stdout
    again = agent("activate", env=env)
    assert again.returncode == 0
    assert "already activated" in again.stdout
    assert agent("heartbeat", env=env).returncode == 0
    [device] = admin.get("/api/v1/devices").json()["items"]
    assert device["hostname"] == "ANN-PC"
    assert device["serial_number"] == "SN-ANN-PC"
    # A refusal is reported with the server's code and exit status 3.
    refused = agent(
        "activate",
        "--server",
        server.url,
        "--token",
        "fkt_wrong",
        "--email",
        "ann@example.com",
        env=agent_env(tmp_path / "other", "OTHER"),
    )
    assert refused.returncode == 3
    assert "[token_invalid]" in refused.stderr


def test_silent_activation_from_environment_and_config_file_then_deprovisioning_stops_the_agent(
    server: ServerProcess, tmp_path: Path
) -> None:
    admin, token, users = setup_org(server, "ann@example.com", "bob@example.com")
    from_env = agent_env(
        tmp_path / "ann",
        "ANN-PC",
        FLEETKEEP_SERVER=server.url,
        FLEETKEEP_TOKEN=token,
        FLEETKEEP_EMAIL="ann@example.com",
    )
    assert agent("activate", env=from_env).returncode == 0
    config = tmp_path / "agent.toml"
    config.write_text(f'server = "{server.url}"\ntoken = "{token}"\nemail = "bob@example.com"\n')
    from_file = agent_env(tmp_path / "bob", "BOB-PC", FLEETKEEP_AGENT_CONFIG=str(config))
    # ``run`` activates silently on first start, then heartbeats.
    runner = subprocess.Popen(
        [str(BIN / "fleetkeep-agent"), "run", "--interval", "0.3"],
        env=from_file,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "bob" / "device.json").exists():
        assert runner.poll() is None, runner.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    hosts = {d["hostname"]: d["user_email"] for d in admin.get("/api/v1/devices").json()["items"]}
    assert hosts == {"ANN-PC": "ann@example.com", "BOB-PC": "bob@example.com"}
    assert admin.post(f"/api/v1/users/{users['bob@example.com']}/preserve").status_code == 200
    assert wait_exit(runner, 10) == 4
    _, stderr = runner.communicate()
    assert "user_preserved" in stderr
    assert not (tmp_path / "bob" / "device.json").exists()
    # Ann's agent is unaffected.
    assert agent("heartbeat", env=from_env).returncode == 0


def test_a_mobile_app_configured_by_mdm_activates_and_wipes_itself_when_unauthorized(
    server: ServerProcess, tmp_path: Path
) -> None:
    admin, token, users = setup_org(server, "ann@example.com")
    plist = run_cli(
        ["deploy", "mobile-config", "--token", token, "--server", server.url, "--format", "ios"],
        server.env,
    ).stdout
    managed = tmp_path / "managed.plist"
    managed.write_text(plist.replace("$EMAIL$", "ann@example.com"))  # what the MDM does
    state_dir = tmp_path / "phone"
    env = agent_env(
        state_dir, "Ann's iPhone", FLEETKEEP_MANAGED_CONFIG=str(managed), FLEETKEEP_PLATFORM="ios"
    )
    assert agent("activate", env=env).returncode == 0
    (state_dir / "cache.db").write_text("local copies")
    [device] = admin.get("/api/v1/devices").json()["items"]
    assert device["platform"] == "ios"
    admin.delete(f"/api/v1/users/{users['ann@example.com']}")
    beat = agent("heartbeat", env=env)
    assert beat.returncode == 4
    assert "user_deleted" in beat.stderr
    assert not state_dir.exists()
