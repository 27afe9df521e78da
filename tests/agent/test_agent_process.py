"""Real ``fleetkeep-agent`` processes activating against a real ``fleetkeep serve`` over HTTP."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.servers import BIN, ServerProcess, run_cli
from tests.support.slapd import AD_BASE, SYNC_PASSWORD, Slapd, start_slapd


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


def agent(
    *args: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "fleetkeep-agent"), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def device_calls_refused(server: ServerProcess) -> int:
    """Device API calls (heartbeats, backups) the server answered 401, from its request log
    (written after the answer, so give it a moment to show the first)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        count = sum(
            1
            for line in lines
            if str(line.get("path")).startswith("/device/v1/")
            and line.get("path") != "/device/v1/activations"
            and line.get("status") == 401
        )
        if count or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


def device_token(state_dir: Path) -> str:
    return str(json.loads((state_dir / "device.json").read_text())["device_token"])


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
        [str(BIN / "fleetkeep-agent"), "run", "--interval", "0.3", "--no-backups"],
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
    # Within one heartbeat: the agent's first call after preserving was refused and was its last.
    assert device_calls_refused(server) == 1
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


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    directory = start_slapd(tmp_path_factory.mktemp("slapd"))
    yield directory
    directory.stop()


def sync(admin: httpx.Client, directory_id: int) -> None:
    run = admin.post(f"/api/v1/directories/{directory_id}/sync", timeout=120)
    assert run.status_code == 200, run.text
    if run.json()["status"] == "held":  # the safety hold: the test is the admin confirming
        url = f"/api/v1/directories/{directory_id}/syncs/{run.json()['id']}/confirm"
        run = admin.post(url, timeout=120)
    assert run.json()["status"] in ("succeeded", "confirmed"), run.text


def test_an_ad_account_activates_with_its_password_and_a_directory_sync_stops_its_agent(
    server: ServerProcess, slapd: Slapd, tmp_path: Path
) -> None:
    admin, token, _ = setup_org(server)
    profile = admin.get("/api/v1/profiles").json()
    profile_id = (profile["items"] if isinstance(profile, dict) else profile)[0]["id"]
    regions = admin.get("/api/v1/storage-regions").json()
    region_id = (regions["items"] if isinstance(regions, dict) else regions)[0]["id"]
    ou = slapd.new_ou(AD_BASE)
    dns = {}
    for sam in ("ann", "bob"):
        dns[sam] = slapd.add_ad_user(ou, sam)
        slapd.modify(dns[sam], {"userPassword": [f"{sam}-password"]})
    created = admin.post(
        "/api/v1/directories",
        json={
            "name": "corp",
            "kind": "ad",
            "settings": {
                "hosts": [f"127.0.0.1:{slapd.port}"],
                "bind_dn": slapd.sync_dn(AD_BASE),
                "base_dn": ou,
            },
            "bind_password": SYNC_PASSWORD,
        },
    )
    assert created.status_code == 201, created.text
    directory_id = created.json()["id"]
    mapping = admin.post(
        f"/api/v1/directories/{directory_id}/mappings",
        json={
            "purpose": "deployment",
            "rule": {"type": "all"},
            "profile_id": profile_id,
            "storage_region_id": region_id,
        },
    )
    assert mapping.status_code == 201, mapping.text
    sync(admin, directory_id)

    common = {"FLEETKEEP_SERVER": server.url, "FLEETKEEP_TOKEN": token}
    wrong = agent(
        "activate",
        "--username",
        "ann",
        "--domain",
        "corp.example",
        "--password-stdin",
        env=agent_env(tmp_path / "guess", "ANN-PC", **common),
        stdin="guess\n",
    )
    assert wrong.returncode == 3
    assert "[password_rejected]" in wrong.stderr
    assert "guess" not in wrong.stdout + wrong.stderr
    ann_env = agent_env(tmp_path / "ann", "ANN-PC", **common)
    done = agent(
        "activate",
        "--username",
        "ann",
        "--domain",
        "corp.example",
        "--password-stdin",
        env=ann_env,
        stdin="ann-password\n",
    )
    assert done.returncode == 0, done.stderr
    assert "(imd-v2)" in done.stdout
    [device] = admin.get("/api/v1/devices").json()["items"]
    assert device["user_email"] == "ann@corp.example"
    assert device["activation_mode"] == "imd-v2"

    runner = subprocess.Popen(
        [str(BIN / "fleetkeep-agent"), "run", "--interval", "0.3", "--no-backups"],
        env=ann_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    assert runner.poll() is None, runner.communicate()
    # Ann leaves: her account is disabled in AD, the next sync preserves her, and her agent
    # is told at its next heartbeat.
    slapd.modify(dns["ann"], {"userAccountControl": ["514"]})
    sync(admin, directory_id)
    [ann] = admin.get("/api/v1/users", params={"q": "ann@"}).json()["items"]
    assert ann["state"] == "preserved"
    assert wait_exit(runner, 15) == 4
    _, stderr = runner.communicate()
    assert "user_preserved" in stderr
    assert not (tmp_path / "ann" / "device.json").exists()
    assert device_calls_refused(server) == 1


def test_a_mapped_replacement_device_takes_over_from_the_old_agent(
    server: ServerProcess, tmp_path: Path
) -> None:
    admin, token, _ = setup_org(server, "ann@example.com")
    common = {"FLEETKEEP_SERVER": server.url, "FLEETKEEP_TOKEN": token}
    old_env = agent_env(tmp_path / "old", "ANN-OLD", FLEETKEEP_EMAIL="ann@example.com", **common)
    old_env.update(FLEETKEEP_PLATFORM="windows")
    assert agent("activate", env=old_env).returncode == 0
    mapping = tmp_path / "devices.csv"
    mapping.write_text(
        "emailID*,userName*,deviceName*,deviceIdentifierType*,deviceIdentifier*,"
        "oldDeviceName,restoreData\n"
        "ann@example.com,ann,Ann's new laptop,serial-number,SN-ANN-NEW,ANN-OLD,DATA\n"
    )
    imported = run_cli(["deploy", "import-mappings", str(mapping)], server.env)
    assert imported.returncode == 0, imported.stderr

    # The new device says nothing about its user: its serial number is in the mapping.
    new_env = agent_env(tmp_path / "new", "ANN-NEW", **common)
    new_env.update(FLEETKEEP_PLATFORM="linux")
    done = agent("activate", env=new_env)
    assert done.returncode == 0, done.stderr
    assert "(imd-v4)" in done.stdout
    devices = {d["hostname"]: d for d in admin.get("/api/v1/devices").json()["items"]}
    assert devices["ANN-NEW"]["name"] == "Ann's new laptop"
    assert devices["ANN-NEW"]["replaces_id"] == devices["ANN-OLD"]["id"]
    assert devices["ANN-OLD"]["state"] == "decommissioned"

    # The old agent stops backing up: its next heartbeat is final.
    beat = agent("heartbeat", env=old_env)
    assert beat.returncode == 4
    assert "device_decommissioned" in beat.stderr
    # The new one reads its restore plan with its own token.
    plan = httpx.get(
        f"{server.url}/device/v1/restore-plan",
        headers={"Authorization": f"Bearer {device_token(tmp_path / 'new')}"},
    )
    assert plan.status_code == 200, plan.text
    assert plan.json()["scope"] == "DATA"
    assert plan.json()["source_device_id"] == devices["ANN-OLD"]["id"]
