"""Driving real ``fleetkeep-agent`` processes for backups against a real server."""

from __future__ import annotations

import base64
import json
import os
import random
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from fleetkeep.backup import Repository
from fleetkeep.backup.stores import Store
from tests.backup.conftest import SMALL_CHUNKS, SMALL_PACKS
from tests.support.servers import BIN, ServerProcess, wait_ready


@dataclass
class Org:
    admin: httpx.Client
    token: str
    profile_id: int
    region_id: int

    def user(self, email: str, **extra: Any) -> int:
        r = self.admin.post(
            "/api/v1/users",
            json={
                "email": email,
                "profile_id": self.profile_id,
                "storage_region_id": self.region_id,
                **extra,
            },
        )
        assert r.status_code == 201, r.text
        return int(r.json()["id"])


def setup_org(
    server: ServerProcess, store_url: str, policy: dict[str, Any] | None = None, tag: str = ""
) -> Org:
    """A profile, a region and a deployment token; ``tag`` keeps names apart on a server that
    several tests share."""
    admin = server.admin_client()
    r = admin.post("/api/v1/profiles", json={"name": f"Laptops{tag}", "policy": policy or {}})
    assert r.status_code == 201, r.text
    profile = r.json()["id"]
    r = admin.post("/api/v1/storage-regions", json={"name": f"main{tag}", "store_url": store_url})
    assert r.status_code == 201, r.text
    region = r.json()["id"]
    token = admin.post("/api/v1/deployment-tokens", json={"label": "rollout"}).json()["token"]
    return Org(admin, token, profile, region)


@dataclass
class Agent:
    """One device: its state directory, its environment and its home folder."""

    env: dict[str, str]
    state_dir: Path
    home: Path

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "fleetkeep-agent"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def device_id(self) -> int:
        return int(json.loads((self.state_dir / "device.json").read_text())["device_id"])

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(BIN / "fleetkeep-agent"), *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def new_agent(
    tmp_path: Path, server: ServerProcess, org: Org, email: str, hostname: str, **extra: str
) -> Agent:
    base = tmp_path / hostname
    home = base / "home"
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETKEEP_", "AWS_"))}
    env.update(
        FLEETKEEP_AGENT_DIR=str(base / "state"),
        FLEETKEEP_HOSTNAME=hostname,
        FLEETKEEP_SERIAL=f"SN-{hostname}",
        FLEETKEEP_HARDWARE_UUID="",
        FLEETKEEP_AGENT_RETRY_ATTEMPTS="4",
        FLEETKEEP_AGENT_RETRY_CAP="0.5",
        HOME=str(home),
    )
    env.update(extra)
    agent = Agent(env, base / "state", home)
    agent.ok("activate", "--server", server.url, "--token", org.token, "--email", email)
    return agent


def repository_key(server: ServerProcess, agent: Agent) -> bytes:
    """The user's data key, as the server hands it to the agent."""
    token = json.loads((agent.state_dir / "device.json").read_text())["device_token"]
    r = httpx.post(
        f"{server.url}/device/v1/repository/key",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return base64.b64decode(r.json()["dek"])


def small_pack_repository(server: ServerProcess, agent: Agent, store: Store) -> bytes:
    """Create the user's repository with small chunks and packs (a few MB make many packs),
    before the server would create one with the production sizes; returns the DEK."""
    dek = repository_key(server, agent)
    Repository.init(store, dek, chunker=SMALL_CHUNKS, pack_target=SMALL_PACKS)
    return dek


def random_tree(root: Path, files: int, size: int, seed: int) -> Path:
    rng = random.Random(seed)
    (root / "Documents").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / "Documents" / f"file-{i:03d}.bin").write_bytes(rng.randbytes(size))
    (root / "Documents" / "notes.txt").write_text("meeting notes\n" * 5000)
    return root


def restart(server: ServerProcess) -> None:
    """Start ``fleetkeep serve`` again on the same port, database and data directory."""
    with server.log_path.open("ab") as log:
        server.process = subprocess.Popen(
            [str(BIN / "fleetkeep"), "serve"], env=server.env, stdout=log, stderr=subprocess.STDOUT
        )
    wait_ready(server)


def make_tree(root: Path) -> None:
    (root / "Documents" / "deep").mkdir(parents=True)
    (root / "Documents" / "report.txt").write_text("quarterly numbers\n" * 3000)
    (root / "Documents" / "deep" / "photo.raw").write_bytes(os.urandom(200_000))
    (root / "Documents" / "empty").write_bytes(b"")
    (root / "Documents" / "ünïcødé.md").write_text("names are bytes")
    os.symlink("report.txt", root / "Documents" / "latest")
    (root / ".cache").mkdir()
    (root / ".cache" / "junk.bin").write_bytes(os.urandom(50_000))


def assert_nothing_resent(backup_output: str) -> None:
    """An unchanged re-backup sends no file data. (A tree or two may be new: the directories
    above the backed-up folder, such as the shared /tmp, change under other tests.)"""
    match = re.search(r"(\d+) objects \(([\d.]+) (B|KB)\) uploaded", backup_output)
    assert match is not None, backup_output
    assert match.group(3) == "B" or float(match.group(2)) < 4, backup_output
