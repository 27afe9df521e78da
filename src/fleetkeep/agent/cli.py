"""``fleetkeep-agent``: activate, run (heartbeats and scheduled backups), backup, restore,
snapshots, status.

Exit codes: 0 ok, 1 not activated, 2 configuration error, 3 refused (activation, quota …),
4 the server no longer authorizes this device (its token was wiped), 5 server unreachable,
6 try again later (the server or its key provider is unavailable), 7 nothing to back up or
restore.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, NoReturn

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from fleetkeep import __version__
from fleetkeep.agent import backups, enrollment, replacement, state
from fleetkeep.agent.client import DeviceClient, DeviceUnauthorized, ServerRefused
from fleetkeep.agent.config import ConfigError, load_config
from fleetkeep.backup import BackupError, BackupProgress
from fleetkeep.units import format_bytes

app = typer.Typer(help="fleetkeep endpoint agent.", no_args_is_help=True)

EXIT_NOT_ACTIVATED = 1
EXIT_CONFIG = 2
EXIT_REFUSED = 3
EXIT_UNAUTHORIZED = 4
EXIT_UNREACHABLE = 5
EXIT_TRY_LATER = 6
EXIT_NOTHING = 7


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
    schedule = backups.Schedule.load()
    info |= {
        "last_backup": schedule.last_finished_at,
        "last_snapshot": schedule.last_snapshot,
        "last_error": schedule.last_error,
    }
    if as_json:
        typer.echo(json.dumps(info))
    else:
        for key, value in info.items():
            typer.echo(f"{key:>13}: {value if value is not None else '-'}")


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
    with _authorized(current), DeviceClient(current.server, current.device_token) as client:
        answer = client.heartbeat()
    current.config.update(answer.get("config", {}))


@contextmanager
def _authorized(current: state.Enrollment) -> Iterator[None]:
    try:
        yield
    except DeviceUnauthorized as exc:
        enrollment.forget(current)
        _exit(
            f"the server no longer authorizes this device ({exc.reason}): {exc.detail}; "
            "local credentials removed",
            EXIT_UNAUTHORIZED,
        )


@app.command()
def run(
    interval: Annotated[
        float | None, typer.Option(help="seconds between heartbeats (default: server's)")
    ] = None,
    backup_interval: Annotated[
        float | None,
        typer.Option(help="seconds between backups (default: the profile's interval)"),
    ] = None,
    no_backups: Annotated[bool, typer.Option(help="heartbeats only")] = False,
) -> None:
    """Run until stopped: activate silently on first start, then heartbeat on an interval and
    back up on the profile's interval, counted from the previous backup's finish.

    Network errors, 5xx and 429 answers are retried (a failed backup after a back-off);
    'unauthorized' stops it. SIGTERM stops a running backup at its next progress step.
    """
    current = state.load() or _activate({}, None)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    _restore_if_replacing(current)
    next_beat = 0.0
    while not stop.is_set():
        if time.monotonic() >= next_beat:
            try:
                _beat(current)
            except httpx.TransportError as exc:
                typer.echo(f"fleetkeep-agent: server unreachable, will retry: {exc}", err=True)
            except ServerRefused as exc:
                if exc.status < 500 and exc.status != 429:
                    _exit(f"heartbeat refused: {exc.detail} [{exc.code}]", EXIT_REFUSED)
                typer.echo(f"fleetkeep-agent: server busy ({exc.code}), will retry", err=True)
            beat_every = interval or float(current.config.get("heartbeat_seconds", 300))
            next_beat = time.monotonic() + beat_every
        wait = next_beat - time.monotonic()
        if not no_backups:
            every = timedelta(
                seconds=backup_interval
                if backup_interval is not None
                else 60 * float(current.config.get("backup_interval_minutes", 240))
            )
            # Reread: a 'backup now' from the command line also resets the interval.
            schedule = backups.Schedule.load()
            due = schedule.due_in(every, datetime.now(UTC))
            if due <= 0:
                _scheduled_backup(current, schedule, stop)
                continue
            wait = min(wait, due)
        stop.wait(max(0.05, wait))
    typer.echo("stopped")


def _restore_if_replacing(current: state.Enrollment) -> None:
    """A device that replaces another restores its data once, before its first backup."""
    try:
        with _authorized(current), DeviceClient(current.server, current.device_token) as client:
            pending = client.restore_plan()["status"] == "pending"
    except (ServerRefused, httpx.TransportError):
        return  # no plan (404), or the server is away: the next start tries again
    if not pending:
        return
    typer.echo("replacement restore started", err=True)
    try:
        with _authorized(current):
            _, report = replacement.execute_plan(current)
    except (ServerRefused, httpx.TransportError, backups.NoBackups, BackupError, OSError) as exc:
        typer.echo(f"fleetkeep-agent: replacement restore failed: {_describe(exc)}", err=True)
        return
    typer.echo(f"replacement restore done: {report.files} files", err=True)


class _Stopped(Exception):
    """The daemon was told to stop during a backup."""


def _scheduled_backup(
    current: state.Enrollment, schedule: backups.Schedule, stop: threading.Event
) -> None:
    def check_stop(_progress: BackupProgress) -> None:
        if stop.is_set():
            raise _Stopped("the agent is stopping")

    typer.echo("backup started", err=True)
    try:
        with _authorized(current):
            result = backups.run_backup(current, on_progress=check_stop)
    except _Stopped:
        typer.echo("backup interrupted: the agent is stopping", err=True)
        return
    except backups.BackupRunning as exc:
        typer.echo(f"fleetkeep-agent: {exc}; waiting for it", err=True)
        stop.wait(5)
        return
    except (ServerRefused, httpx.TransportError, backups.NothingToBackUp, BackupError) as exc:
        schedule.finished(None, _describe(exc))
        typer.echo(f"fleetkeep-agent: backup failed, will retry: {_describe(exc)}", err=True)
        return
    schedule.finished(result.snapshot["snapshot_id"], None)
    typer.echo(f"backup done: snapshot {result.snapshot['snapshot_id'][:12]}", err=True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ServerRefused):
        return f"{exc.detail} [{exc.code}]"
    if isinstance(exc, httpx.TransportError):
        return f"server unreachable: {exc}"
    return str(exc) or type(exc).__name__


def _fail_backup(exc: BaseException) -> NoReturn:
    if isinstance(exc, ServerRefused):
        try_later = exc.status >= 500 or exc.status == 429
        _exit(
            f"backup failed: {_describe(exc)}" + ("; try again later" if try_later else ""),
            EXIT_TRY_LATER if try_later else EXIT_REFUSED,
        )
    if isinstance(exc, httpx.TransportError):
        _exit(f"backup failed: {_describe(exc)}", EXIT_UNREACHABLE)
    if isinstance(exc, backups.NothingToBackUp | backups.NoBackups):
        _exit(str(exc), EXIT_NOTHING)
    _exit(f"failed: {_describe(exc)}", 1)


@app.command()
def backup(
    path: Annotated[
        list[Path] | None, typer.Option(help="back up this folder instead of the profile's")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    limit_upload: Annotated[
        float | None, typer.Option(help="upload at most this many KiB/s (default: profile's)")
    ] = None,
) -> None:
    """Back up now (the daemon's schedule then counts from this backup)."""
    current = _enrolled()
    schedule = backups.Schedule.load()
    console = Console(stderr=True)
    bar = Progress(
        SpinnerColumn(),
        TextColumn("[bold]backing up[/]"),
        BarColumn(),
        TextColumn("{task.fields[files]} files, {task.fields[size]} read, {task.fields[new]} new"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
    )
    task = bar.add_task("backup", total=None, files=0, size="0 B", new="0 B")

    def show(progress: BackupProgress) -> None:
        bar.update(
            task,
            files=progress.files,
            size=format_bytes(progress.bytes),
            new=format_bytes(progress.new_bytes),
        )

    try:
        with bar, _authorized(current):
            result = backups.run_backup(
                current,
                paths=[str(p) for p in path or []] or None,
                on_progress=show,
                limit_kbps=limit_upload,
            )
    except backups.BackupRunning as exc:
        _exit(str(exc), EXIT_TRY_LATER)
    except (ServerRefused, httpx.TransportError, backups.NothingToBackUp, BackupError) as exc:
        schedule.finished(None, _describe(exc))
        _fail_backup(exc)
    schedule.finished(result.snapshot["snapshot_id"], None)
    snap = result.snapshot
    typer.echo(
        f"snapshot {snap['snapshot_id'][:12]}: {snap['file_count']} files, "
        f"{format_bytes(snap['size_bytes'])}, {format_bytes(snap['new_bytes'])} new, "
        f"{result.uploaded_objects} objects ({format_bytes(result.uploaded_bytes)}) uploaded"
    )


@app.command()
def snapshots(
    all_devices: Annotated[bool, typer.Option(help="every device of this user")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """Snapshots of this device (or of all of this user's devices), newest first."""
    current = _enrolled()
    from fleetkeep.agent.remote import VaultApi

    try:
        with _authorized(current), DeviceClient(current.server, current.device_token) as client:
            found = VaultApi(client).snapshots(None if all_devices else current.device_id)
    except (ServerRefused, httpx.TransportError) as exc:
        _fail_backup(exc)
    if as_json:
        typer.echo(json.dumps(found))
        return
    if not found:
        typer.echo("no snapshots")
    for s in found:
        typer.echo(
            f"{s['snapshot_id'][:12]}  {s['time'][:19]}  device {s['device_id']}  "
            f"{s['file_count']} files  {format_bytes(s['size_bytes'])}  {', '.join(s['paths'])}"
        )


@app.command()
def restore(
    target: Annotated[Path, typer.Option(help="folder to restore into (created if missing)")],
    snapshot: Annotated[str | None, typer.Option(help="snapshot id or prefix")] = None,
    at: Annotated[
        datetime | None, typer.Option(help="the last snapshot at or before this time (UTC)")
    ] = None,
    path: Annotated[
        list[str] | None, typer.Option(help="restore only this path of the snapshot")
    ] = None,
    device: Annotated[
        int | None, typer.Option(help="restore another device's backup (default: this one)")
    ] = None,
    any_device: Annotated[bool, typer.Option(help="the latest of any of my devices")] = False,
) -> None:
    """Restore the latest snapshot (or one by id or time), whole or some paths, into a folder.

    Snapshots keep absolute paths: /home/ann/Documents comes back as
    TARGET/home/ann/Documents. Nothing is ever written outside TARGET.
    """
    current = _enrolled()
    when = at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at
    source = None if any_device else (device if device is not None else current.device_id)
    try:
        with _authorized(current):
            snap, stats = backups.restore(
                current, target, snapshot_id=snapshot, at=when, device_id=source, paths=path
            )
    except (
        ServerRefused,
        httpx.TransportError,
        backups.NoBackups,
        BackupError,
    ) as exc:
        _fail_backup(exc)
    typer.echo(
        f"restored snapshot {snap.id[:12]} ({snap.time.isoformat(timespec='seconds')}) to "
        f"{target}: {stats.files} files, {stats.dirs} folders, {format_bytes(stats.bytes)}"
    )


def main() -> None:
    app()


@app.command("restore-plan")
def restore_plan() -> None:
    """Execute this device's replacement restore plan: the device it replaces comes back here,
    its folders mapped to this device's (the rest under a restore folder in the home)."""
    current = _enrolled()
    try:
        with _authorized(current):
            doc, report = replacement.execute_plan(current)
    except (ServerRefused, httpx.TransportError, backups.NoBackups, BackupError) as exc:
        _fail_backup(exc)
    typer.echo(
        f"restored snapshot {report.snapshot[:12]} of device {doc['source_device_id']}: "
        f"{report.files} files placed under {doc['plan']['target_home']}"
        + (f"; {report.conflicts} existing kept, ours beside them" if report.conflicts else "")
    )
