"""A real key connector process (``python -m fleetkeep.connector``) and the waits around it."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.servers import BIN, ServerProcess

# ``python -m fleetkeep.connector`` is ``fleetkeep key-connector`` without the admin CLI's
# imports (seconds less per start); one test runs the full command.
LIGHT = [sys.executable, "-m", "fleetkeep.connector"]
FULL = [str(BIN / "fleetkeep"), "key-connector"]


class ConnectorProcess:
    def __init__(
        self,
        server: ServerProcess,
        key_file: Path,
        token: str,
        log: Path,
        command: list[str] = LIGHT,
    ) -> None:
        self.args = [
            *command,
            "--server",
            server.url,
            "--key-file",
            str(key_file),
            "--max-backoff",
            "1",
        ]
        self.env = {**server.env, "FLEETKEEP_CONNECTOR_TOKEN": token}
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ConnectorProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def connector_token(api: httpx.Client) -> str:
    created = api.post("/api/v1/keys/connector-tokens", json={"label": "e2e"})
    assert created.status_code == 201, created.text
    token: str = created.json()["token"]
    return token


def new_key_file(path: Path) -> Path:
    subprocess.run(
        [*LIGHT, "new-key", "--key-file", str(path)], check=True, capture_output=True, timeout=60
    )
    return path


def connected(api: httpx.Client, count: int = 1) -> Callable[[], bool]:
    return lambda: len(api.get("/api/v1/keys/status").json()["connectors"]) >= count
