"""``fleetkeep directories …``: register, test and sync AD/LDAP directories; manage mappings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from fleetkeep.admins.cli import read_password
from fleetkeep.clikit import (
    actor,
    console,
    db,
    fail,
    handles_errors,
    print_table,
    sessions,
    settings,
)
from fleetkeep.directories import service
from fleetkeep.directories.models import DirectoryKind, MappingPurpose, SyncRun, SyncStatus
from fleetkeep.identity.service import find_profile, find_region, parse_quota

directories_app = typer.Typer(help="Directories (AD, LDAP …) and their sync.", no_args_is_help=True)
mappings_app = typer.Typer(
    help="Mappings: which directory users get which profile.", no_args_is_help=True
)
directories_app.add_typer(mappings_app, name="mappings")


@directories_app.command("add")
@handles_errors
def add(
    name: str,
    base_dn: Annotated[str, typer.Option(help="where users and groups are searched")],
    host: Annotated[list[str], typer.Option(help="host or host:port; repeat for fail-over")],
    kind: Annotated[DirectoryKind, typer.Option(help="ad or ldap")] = DirectoryKind.AD,
    port: Annotated[
        int | None, typer.Option(help="389/636, or 3268/3269 for a global catalog")
    ] = None,
    security: Annotated[str, typer.Option(help="none, starttls or ldaps")] = "none",
    ca_cert: Annotated[Path | None, typer.Option(help="PEM file of the CA to trust")] = None,
    bind_dn: Annotated[str, typer.Option(help="the account the sync binds as")] = "",
    password_stdin: Annotated[bool, typer.Option(help="read the bind password from stdin")] = False,
    interval_hours: Annotated[float, typer.Option(help="sync every N hours")] = 24.0,
    auto_update: Annotated[bool, typer.Option(help="keep name/email/username in step")] = True,
    auto_preserve: Annotated[bool, typer.Option(help="preserve users who leave scope")] = True,
    netbios_domain: Annotated[str, typer.Option(help="e.g. CORP, for DOMAIN\\user look-ups")] = "",
    extra: Annotated[
        str | None,
        typer.Option(
            "--settings",
            help='more settings as JSON, e.g. {"disabled_filter": "(employeeType=disabled)"}',
        ),
    ] = None,
) -> None:
    """Register an AD or LDAP directory (the password is sealed, never shown again)."""
    try:
        more = json.loads(extra) if extra else {}
    except json.JSONDecodeError as exc:
        fail(f"--settings is not JSON: {exc}", 2)
    if not isinstance(more, dict):
        fail("--settings must be a JSON object", 2)
    config: dict[str, Any] = {
        **more,
        "hosts": host,
        "security": security,
        "bind_dn": bind_dn,
        "base_dn": base_dn,
        "netbios_domain": netbios_domain,
    }
    if port is not None:
        config["port"] = port
    if ca_cert is not None:
        config["ca_cert"] = ca_cert.read_text()
    with db() as session:
        directory = service.create_directory(
            session,
            actor(),
            settings().data_dir,
            name=name,
            kind=kind,
            secret=read_password(password_stdin),
            settings=config,
            sync_interval_hours=interval_hours,
            auto_update=auto_update,
            auto_preserve=auto_preserve,
        )
        console.print(f"directory {directory.name!r} registered (id {directory.id})")


@directories_app.command("list")
@handles_errors
def list_directories() -> None:
    with db() as session:
        rows = [
            [
                d.id,
                d.name,
                d.kind,
                ", ".join(d.settings.get("hosts", [])),
                d.settings.get("base_dn", ""),
                "yes" if d.enabled else "no",
                f"{d.sync_interval_hours:g} h",
                d.last_sync_at.strftime("%Y-%m-%d %H:%M") if d.last_sync_at else "never",
            ]
            for d in service.list_directories(session)
        ]
    print_table(
        "Directories",
        ["id", "name", "kind", "hosts", "base DN", "enabled", "every", "last sync"],
        rows,
    )


@directories_app.command("test")
@handles_errors
def test(name: str) -> None:
    """Check DNS, TCP, TLS, bind and base DN, and say which one failed."""
    with db() as session:
        directory = service.find_directory(session, name)
        report = service.diagnose_directory(session, settings().data_dir, directory.id)
    for step in report.steps:
        mark = "[green]ok[/]" if step.ok else "[bold red]FAILED[/]"
        hint = f" (check {step.field})" if step.field and not step.ok else ""
        console.print(f"{mark} {step.name:8} {step.host:24} {step.detail}{hint}", highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@directories_app.command("sync")
@handles_errors
def sync(
    name: str,
    dry_run: Annotated[bool, typer.Option(help="show the plan, change nothing")] = False,
) -> None:
    """Sync now, with a progress bar and a summary."""
    with db() as session:
        directory_id = service.find_directory(session, name).id
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed} entries"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("fetching", total=None)

        def advance(what: str, count: int) -> None:
            progress.update(task, description=f"fetching {what}", completed=count)

        run = service.sync_directory(
            sessions(),
            actor(),
            settings().data_dir,
            directory_id,
            dry_run=dry_run,
            progress=advance,
        )
    _summary(run)
    if run.status is SyncStatus.FAILED:
        fail(f"sync failed, nothing changed: {run.error}")
    if run.status is SyncStatus.HELD:
        console.print(
            f"[yellow]held:[/] {run.held_reason}\n"
            f"confirm with: fleetkeep directories confirm {name} {run.id}"
        )


def _summary(run: SyncRun) -> None:
    print_table(
        f"Sync {run.id}: {run.status} ({run.duration_ms / 1000:.1f} s)",
        ["seen", "created", "updated", "preserved", "reactivated", "skipped", "errors"],
        [
            [
                run.seen,
                run.created,
                run.updated,
                run.preserved,
                run.reactivated,
                run.skipped,
                run.errors,
            ]
        ],
    )
    listed = [c for c in run.report.get("changes", []) if c["action"] in ("skip", "preserve")]
    if listed:
        print_table(
            "Skipped and preserved",
            ["action", "entry", "email", "reason"],
            [
                [c["action"], c["dn"] or c["external_id"], c["email"] or "", c["reason"]]
                for c in listed[:50]
            ],
        )
    for warning in run.report.get("warnings", [])[:20]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


@directories_app.command("syncs")
@handles_errors
def syncs(name: str, limit: Annotated[int, typer.Option(min=1, max=500)] = 20) -> None:
    """Sync history, newest first."""
    with db() as session:
        directory = service.find_directory(session, name)
        runs = service.list_sync_runs(session, directory.id, limit=limit)
        rows = [
            [
                r.id,
                r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                r.status,
                r.trigger,
                r.seen,
                r.created,
                r.updated,
                r.preserved,
                r.skipped,
                f"{r.duration_ms / 1000:.1f} s",
                r.error or r.held_reason or "",
            ]
            for r in runs
        ]
    print_table(
        f"Syncs of {name}",
        [
            "id",
            "started",
            "status",
            "trigger",
            "seen",
            "new",
            "upd",
            "pres",
            "skip",
            "took",
            "note",
        ],
        rows,
    )


@directories_app.command("confirm")
@handles_errors
def confirm(name: str, run_id: int) -> None:
    """Apply a sync that the safety threshold held."""
    with db() as session:
        directory = service.find_directory(session, name)
        run = service.confirm_held_sync(session, actor(), directory.id, run_id)
        _summary(run)


@mappings_app.command("list")
@handles_errors
def list_mappings(name: str) -> None:
    with db() as session:
        directory = service.find_directory(session, name)
        rows = [
            [
                m.id,
                m.priority,
                m.purpose,
                m.name,
                json.dumps(m.rule),
                m.profile_id,
                m.storage_region_id,
                f"{m.quota_value} {m.quota_unit}" if m.quota_value is not None else "profile",
                "yes" if m.auto_import else "no",
            ]
            for m in service.list_mappings(session, directory.id)
        ]
    print_table(
        f"Mappings of {name}",
        ["id", "prio", "purpose", "name", "rule", "profile", "region", "quota", "auto"],
        rows,
    )


@mappings_app.command("add")
@handles_errors
def add_mapping(
    name: str,
    rule: Annotated[str, typer.Option(help='JSON, e.g. {"type": "group", "group": "Sales"}')],
    profile: Annotated[str, typer.Option(help="profile name or id")],
    region: Annotated[str, typer.Option(help="storage region name or id")],
    priority: Annotated[
        int | None, typer.Option(help="lower wins; default: after the existing mappings")
    ] = None,
    purpose: Annotated[MappingPurpose, typer.Option()] = MappingPurpose.IMPORT,
    quota: Annotated[str | None, typer.Option(help="e.g. 50GB; default: the profile's")] = None,
    auto_import: Annotated[bool, typer.Option(help="create matching users")] = True,
    label: Annotated[str, typer.Option(help="a name for the mapping")] = "",
) -> None:
    try:
        parsed = json.loads(rule)
    except json.JSONDecodeError as exc:
        fail(f"--rule is not JSON: {exc}", 2)
    with db() as session:
        directory = service.find_directory(session, name)
        fields: dict[str, Any] = {
            "name": label,
            "rule": parsed,
            "profile_id": find_profile(session, profile).id,
            "storage_region_id": find_region(session, region).id,
            "priority": priority,
            "purpose": purpose,
            "auto_import": auto_import,
        }
        if quota is not None:
            fields["quota_value"], fields["quota_unit"] = parse_quota(quota)
        mapping = service.create_mapping(
            session, actor(), directory.id, data_dir=settings().data_dir, **fields
        )
        console.print(
            f"mapping {mapping.id} added to {directory.name!r} (priority {mapping.priority})"
        )


@mappings_app.command("order")
@handles_errors
def order_mappings(
    name: str,
    mapping_ids: Annotated[list[int], typer.Argument(help="every mapping id, first wins")],
) -> None:
    """Reorder the mappings: the first id listed gets priority 1."""
    with db() as session:
        directory = service.find_directory(session, name)
        service.reorder_mappings(session, actor(), directory.id, mapping_ids)
    list_mappings(name)


@mappings_app.command("remove")
@handles_errors
def remove_mapping(name: str, mapping_id: int) -> None:
    with db() as session:
        directory = service.find_directory(session, name)
        service.delete_mapping(session, actor(), directory.id, mapping_id)
        console.print(f"mapping {mapping_id} removed")
