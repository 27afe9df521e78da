"""``fleetkeep snapshots …``: the snapshot catalogue and backup sessions from the shell."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from fleetkeep.clikit import console, db, handles_errors, print_table
from fleetkeep.deployment.devices import find_device
from fleetkeep.identity.service import find_user
from fleetkeep.units import format_bytes
from fleetkeep.vault import catalogue
from fleetkeep.vault.schemas import SessionOut, SnapshotOut

snapshots_app = typer.Typer(
    help="Snapshots (the catalogue) and backup sessions.", no_args_is_help=True
)


def _ids(user: str | None, device: str | None) -> tuple[int | None, int | None]:
    with db() as session:
        return (
            find_user(session, user).id if user else None,
            find_device(session, device).id if device else None,
        )


@snapshots_app.command("list")
@handles_errors
def list_snapshots(
    user: Annotated[str | None, typer.Option(help="user id or email")] = None,
    device: Annotated[str | None, typer.Option(help="device id or hostname")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """Snapshots of a user or a device, newest first."""
    user_id, device_id = _ids(user, device)
    with db() as session:
        found = catalogue.list_snapshots(session, user_id=user_id, device_id=device_id, limit=limit)
        rows = [SnapshotOut.model_validate(r) for r in found]
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in rows]))
        return
    print_table(
        "Snapshots",
        ["snapshot", "time (UTC)", "user", "device", "host", "files", "size", "new", "paths"],
        [
            [
                r.snapshot_id[:12],
                r.time.strftime("%Y-%m-%d %H:%M:%S"),
                r.user_id,
                r.device_id,
                r.hostname,
                r.file_count,
                format_bytes(r.size_bytes),
                format_bytes(r.new_bytes),
                ", ".join(r.paths),
            ]
            for r in rows
        ],
    )


@snapshots_app.command("sessions")
@handles_errors
def list_sessions(
    user: Annotated[str | None, typer.Option(help="user id or email")] = None,
    device: Annotated[str | None, typer.Option(help="device id or hostname")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 20,
) -> None:
    """Recent backup sessions (running, committed, failed), newest first."""
    user_id, device_id = _ids(user, device)
    with db() as session:
        found = catalogue.list_sessions(session, user_id=user_id, device_id=device_id, limit=limit)
        rows = [SessionOut.model_validate(r) for r in found]
    if not rows:
        console.print("no backup sessions")
        return
    print_table(
        "Backup sessions",
        ["id", "device", "state", "started (UTC)", "uploaded", "files", "error"],
        [
            [
                r.id,
                r.device_id,
                r.state,
                r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                format_bytes(r.uploaded_bytes),
                r.progress.get("files", ""),
                r.error_code,
            ]
            for r in rows
        ],
    )
