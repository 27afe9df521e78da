"""Real processes for end-to-end tests: ``fleetkeep init`` + ``fleetkeep serve`` on a free port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ADMIN_EMAIL = "owner@example.com"
ADMIN_PASSWORD = "correct-horse-battery-staple"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fleetkeep_env(data_dir: Path, database_url: str, **extra: str) -> dict[str, str]:
    # Without bytecode caching every subprocess would recompile the whole package (seconds).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FLEETKEEP_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(
        FLEETKEEP_DATA_DIR=str(data_dir),
        FLEETKEEP_DATABASE_URL=database_url,
        FLEETKEEP_LOG_FORMAT="json",
        COVERAGE_PROCESS_START=env.get("COVERAGE_PROCESS_START", ""),
    )
    env.update(extra)
    return env


def run_cli(
    args: list[str], env: dict[str, str], stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(BIN / "fleetkeep"), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"fleetkeep {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


@dataclass
class ServerProcess:
    url: str
    data_dir: Path
    database_url: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path
    admin_email: str = ADMIN_EMAIL
    admin_password: str = ADMIN_PASSWORD
    _token: str | None = field(default=None, repr=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def admin_client(self) -> httpx.Client:
        """An HTTP client signed in as the owner."""
        if self._token is None:
            response = httpx.post(
                f"{self.url}/api/v1/auth/sign-in",
                json={"email": self.admin_email, "password": self.admin_password},
            )
            response.raise_for_status()
            self._token = response.json()["token"]
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self._token}"}, timeout=30
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # The server runs in its own session: this also ends worker processes (``--workers``)
        # a killed parent would otherwise leave behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


def start_server(
    data_dir: Path,
    database_url: str,
    *,
    init: bool = True,
    extra_env: dict[str, str] | None = None,
    jobs: bool = True,
    serve_args: list[str] | None = None,
) -> ServerProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = fleetkeep_env(
        data_dir, database_url, FLEETKEEP_LISTEN_PORT=str(port), **(extra_env or {})
    )
    if init:
        run_cli(
            ["init", "--email", ADMIN_EMAIL, "--password-stdin"], env, stdin=ADMIN_PASSWORD + "\n"
        )
    log_path = data_dir / "server.log"
    serve_args = list(serve_args or [])
    if "--workers" not in serve_args:
        # One process per test server (serve's default on PostgreSQL is one per core): the
        # suite runs many servers at once on the same cores.
        serve_args += ["--workers", "1"]
    args = [str(BIN / "fleetkeep"), "serve", *serve_args] + ([] if jobs else ["--no-jobs"])
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = ServerProcess(
        f"http://127.0.0.1:{port}", data_dir, database_url, env, process, log_path
    )
    wait_ready(server)
    return server


def wait_ready(server: ServerProcess, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=15).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise AssertionError(f"server not ready in {timeout}s:\n{server.log()}")
