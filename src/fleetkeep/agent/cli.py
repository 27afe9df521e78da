"""``fleetkeep-agent``: activate, run (heartbeats; backups join here), status.

Exit codes: 0 ok, 1 not activated, 2 configuration error, 3 activation refused,
4 the server no longer authorizes this device (its token was wiped), 5 server unreachable.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Annotated, NoReturn

import httpx
import typer

from fleetkeep import __version__
from fleetkeep.agent import enrollment, state
from fleetkeep.agent.client import DeviceClient, DeviceUnauthorized, ServerRefused
from fleetkeep.agent.config import ConfigError, load_config

app = typer.Typer(help="fleetkeep endpoint agent.", no_args_is_help=True)

EXIT_NOT_ACTIVATED = 1
EXIT_CONFIG = 2
EXIT_REFUSED = 3
EXIT_UNAUTHORIZED = 4
EXIT_UNREACHABLE = 5


def _exit(message: str, code: int) -> NoReturn:
    typer.echo(f"fleetkeep-agent: {message}", err=True)
    raise typer.Exit(code)


def _enrolled() -> state.Enrollment:
    current = state.load()
    if current is None:
        _exit("this device is not activated; run 'fleetkeep-agent activate'", EXIT_NOT_ACTIVATED)
    return current


@app.command()
def version() -> None:
    """Print the agent version."""
    typer.echo(__version__)


@app.command()
def activate(
    server: Annotated[str | None, typer.Option(help="server URL")] = None,
    token: Annotated[str | None, typer.Option(help="mass deployment token")] = None,
    auth_key: Annotated[str | None, typer.Option(help="one-time auth key")] = None,
    email: Annotated[str | None, typer.Option()] = None,
    upn: Annotated[str | None, typer.Option(help="Entra ID user principal name")] = None,
    username: Annotated[str | None, typer.Option(help="directory account name")] = None,
    domain: Annotated[str | None, typer.Option(help="directory domain")] = None,
    password_stdin: Annotated[
        bool, typer.Option(help="read the directory password from stdin (IMD v2 proof)")
    ] = False,
    force: Annotated[bool, typer.Option(help="activate again even if already activated")] = False,
) -> None:
    """Activate this device. Without options, silently from environment or config files."""
    current = state.load()
    if current is not None and not force:
        typer.echo(f"already activated as device {current.device_id} on {current.server}")
        return
    _activate(
        {
            "server": server,
            "token": token,
            "auth_key": auth_key,
            "email": email,
            "upn": upn,
            "username": username,
            "domain": domain,
        },
        sys.stdin.readline().rstrip("\n") if password_stdin else None,
    )


def _activate(overrides: dict[str, str | None], password: str | None) -> state.Enrollment:
    try:
        config = load_config(overrides)
        done = enrollment.activate(config, password)
    except ConfigError as exc:
        _exit(str(exc), EXIT_CONFIG)
    except ServerRefused as exc:
        _exit(f"activation refused: {exc.detail} [{exc.code}]", EXIT_REFUSED)
    except httpx.TransportError as exc:
        _exit(f"server unreachable: {exc}", EXIT_UNREACHABLE)
    typer.echo(f"activated as device {done.device_id} ({done.mode}) on {done.server}")
    return done


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """Show whether and how this device is activated (never the token)."""
    current = _enrolled()
    info = {
        "server": current.server,
        "device_id": current.device_id,
        "mode": current.mode,
        "activated_at": current.activated_at,
        "state_dir": str(state.agent_dir()),
        "user": current.config.get("user", {}).get("email"),
        "profile": current.config.get("profile", {}).get("name"),
    }
    if as_json:
        typer.echo(json.dumps(info))
    else:
        for key, value in info.items():
            typer.echo(f"{key:>13}: {value}")


@app.command()
def heartbeat() -> None:
    """Tell the server this device is alive (once)."""
    current = _enrolled()
    try:
        _beat(current)
    except ServerRefused as exc:
        _exit(f"heartbeat refused: {exc.detail} [{exc.code}]", EXIT_REFUSED)
    except httpx.TransportError as exc:
        _exit(f"server unreachable: {exc}", EXIT_UNREACHABLE)
    typer.echo(f"device {current.device_id}: ok")


def _beat(current: state.Enrollment) -> None:
    """One heartbeat; on 'unauthorized' the local credentials are removed and the agent exits."""
    try:
        with DeviceClient(current.server, current.device_token) as client:
            answer = client.heartbeat()
    except DeviceUnauthorized as exc:
        enrollment.forget(current)
        _exit(
            f"the server no longer authorizes this device ({exc.reason}): {exc.detail}; "
            "local credentials removed",
            EXIT_UNAUTHORIZED,
        )
    current.config.update(answer.get("config", {}))


@app.command()
def run(
    interval: Annotated[
        float | None, typer.Option(help="seconds between heartbeats (default: server's)")
    ] = None,
) -> None:
    """Run until stopped: activate silently on first start, then heartbeat on an interval.

    Network errors, 5xx and 429 answers are retried on the next beat; 'unauthorized' stops it.
    """
    current = state.load() or _activate({}, None)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.is_set():
        try:
            _beat(current)
        except httpx.TransportError as exc:
            typer.echo(f"fleetkeep-agent: server unreachable, will retry: {exc}", err=True)
        except ServerRefused as exc:
            if exc.status < 500 and exc.status != 429:
                _exit(f"heartbeat refused: {exc.detail} [{exc.code}]", EXIT_REFUSED)
            typer.echo(f"fleetkeep-agent: server busy ({exc.code}), will retry", err=True)
        wait = interval or float(current.config.get("heartbeat_seconds", 300))
        stop.wait(wait)
    typer.echo("stopped")


def main() -> None:
    app()
