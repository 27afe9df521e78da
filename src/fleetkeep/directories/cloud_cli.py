"""``fleetkeep entra add|sync`` and ``fleetkeep google add|sync``: cloud directories from the CLI.

Mappings, history and confirming held syncs are the ``fleetkeep directories`` commands, which
work on every source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleetkeep.admins.cli import read_password
from fleetkeep.clikit import actor, console, db, fail, handles_errors, sessions, settings
from fleetkeep.directories import entra, google
from fleetkeep.directories import service as directories
from fleetkeep.directories.cloud import Sync
from fleetkeep.directories.models import SyncRun, SyncStatus

entra_app = typer.Typer(help="Microsoft Entra ID directories (Graph).", no_args_is_help=True)
google_app = typer.Typer(help="Google Workspace directories (Admin SDK).", no_args_is_help=True)

Interval = Annotated[float, typer.Option(help="sync every N hours")]
HoldCount = Annotated[int, typer.Option(help="hold a sync preserving more users than this")]
HoldPercent = Annotated[float, typer.Option(help="hold a sync preserving more than this %")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="show the plan, change nothing")]
CaFile = Annotated[str, typer.Option(help="PEM CA bundle to trust (TLS-inspecting proxies)")]


def _sync(name: str, dry_run: bool, sync: Sync) -> None:
    with db() as session:
        directory_id = directories.find_directory(session, name).id
    run = sync(sessions(), actor(), settings().data_dir, directory_id, dry_run=dry_run)
    _report(name, run)


def _report(name: str, run: SyncRun) -> None:
    counts = run.report.get("counts", {})
    verb = "would" if run.dry_run else "did"
    console.print(
        f"sync {run.id} ({run.status}): {run.seen} seen; {verb} create {counts.get('create', 0)}, "
        f"update {counts.get('update', 0)}, preserve {counts.get('preserve', 0)}, "
        f"reactivate {counts.get('reactivate', 0)}; {counts.get('skip', 0)} skipped",
        highlight=False,
    )
    for warning in run.report.get("warnings", [])[:20]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if run.status is SyncStatus.FAILED:
        fail(f"sync failed, nothing changed: {run.error}")
    if run.status is SyncStatus.HELD:
        console.print(
            f"[yellow]held:[/] {run.held_reason}\n"
            f"confirm with: fleetkeep directories confirm {name} {run.id}"
        )


@entra_app.command("add")
@handles_errors
def add_entra(
    name: str,
    tenant_id: Annotated[str, typer.Option(help="the directory (tenant) id or domain")],
    client_id: Annotated[str, typer.Option(help="the app registration's application id")],
    group: Annotated[
        list[str] | None, typer.Option(help="group object id to import; repeat; none: all users")
    ] = None,
    delta: Annotated[
        bool, typer.Option(help="use Graph delta queries after the first pass")
    ] = True,
    authority_url: Annotated[str, typer.Option(help="national clouds")] = entra.DEFAULT_AUTHORITY,
    graph_url: Annotated[str, typer.Option(help="national clouds")] = entra.DEFAULT_GRAPH,
    ca_file: CaFile = "",
    interval_hours: Interval = 24.0,
    hold_above_count: HoldCount = 500,
    hold_above_percent: HoldPercent = 10.0,
) -> None:
    """Register an Entra ID directory; the client secret is read from standard input."""
    secret = read_password(True) or ""
    with db() as session:
        directory = entra.create_entra_directory(
            session,
            actor(),
            settings().data_dir,
            name=name,
            client_secret=secret,
            settings={
                "tenant_id": tenant_id,
                "client_id": client_id,
                "groups": group or [],
                "use_delta": delta,
                "authority_url": authority_url,
                "graph_url": graph_url,
                "ca_file": ca_file,
            },
            sync_interval_hours=interval_hours,
            hold_above_count=hold_above_count,
            hold_above_percent=hold_above_percent,
        )
        console.print(f"Entra directory {directory.name!r} registered (id {directory.id})")


@entra_app.command("sync")
@handles_errors
def sync_entra(name: str, dry_run: DryRun = False) -> None:
    """Read Graph now and plan/apply (or only plan)."""
    _sync(name, dry_run, entra.sync_entra_directory)


@google_app.command("add")
@handles_errors
def add_google(
    name: str,
    admin_email: Annotated[str, typer.Option(help="the administrator the account acts as")],
    key_file: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help="the service account's JSON key")
    ],
    group: Annotated[
        list[str] | None, typer.Option(help="group e-mail to import; repeat; none: all users")
    ] = None,
    domain: Annotated[str, typer.Option(help="only this domain (default: the customer)")] = "",
    api_url: Annotated[str, typer.Option(help="the Admin SDK's address")] = google.DEFAULT_API,
    ca_file: CaFile = "",
    interval_hours: Interval = 24.0,
    hold_above_count: HoldCount = 500,
    hold_above_percent: HoldPercent = 10.0,
) -> None:
    """Register a Google Workspace directory (the key is sealed; delete the file afterwards)."""
    with db() as session:
        directory = google.create_google_directory(
            session,
            actor(),
            settings().data_dir,
            name=name,
            service_account_key=key_file.read_text(),
            settings={
                "admin_email": admin_email,
                "groups": group or [],
                "domain": domain,
                "api_url": api_url,
                "ca_file": ca_file,
            },
            sync_interval_hours=interval_hours,
            hold_above_count=hold_above_count,
            hold_above_percent=hold_above_percent,
        )
        console.print(f"Google directory {directory.name!r} registered (id {directory.id})")


@google_app.command("sync")
@handles_errors
def sync_google(name: str, dry_run: DryRun = False) -> None:
    """Read the Directory API now and plan/apply (or only plan)."""
    _sync(name, dry_run, google.sync_google_directory)
