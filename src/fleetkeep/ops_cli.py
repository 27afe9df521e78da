"""``fleetkeep audit``, ``fleetkeep alerts``, ``fleetkeep jobs`` and ``fleetkeep db``."""

from __future__ import annotations

from typing import Annotated

import typer

from fleetkeep.alerts.models import AlertStatus
from fleetkeep.alerts.service import list_alerts, resolve_alert_by_id
from fleetkeep.audit.service import list_events, record
from fleetkeep.clikit import (
    actor,
    console,
    db,
    engine,
    handles_errors,
    print_table,
    sessions,
    settings,
)
from fleetkeep.db import migration_state, upgrade
from fleetkeep.jobs.registry import builtin_jobs
from fleetkeep.jobs.scheduler import Scheduler, job_status

alerts_app = typer.Typer(help="Alerts.", invoke_without_command=True)
jobs_app = typer.Typer(help="Periodic jobs.", invoke_without_command=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


def audit(
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    action: Annotated[str | None, typer.Option(help="e.g. user.create")] = None,
    actor_name: Annotated[str | None, typer.Option("--actor")] = None,
    target: Annotated[str | None, typer.Option(help="target type, e.g. user")] = None,
) -> None:
    """Show the audit log, newest first."""
    with db() as session:
        events = list_events(
            session, limit=limit, action=action, actor=actor_name, target_type=target
        )
        rows = [
            [
                e.id,
                e.at.strftime("%Y-%m-%d %H:%M:%S"),
                e.actor,
                e.action,
                f"{e.target_type}:{e.target_id}",
            ]
            for e in events
        ]
    print_table("Audit log", ["id", "at (UTC)", "actor", "action", "target"], rows)


@alerts_app.callback()
@handles_errors
def alerts(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="include resolved alerts")] = False,
) -> None:
    """List open alerts."""
    if ctx.invoked_subcommand:
        return
    with db() as session:
        found = list_alerts(session, status=None if all_ else AlertStatus.OPEN, limit=200)
        rows = [
            [
                a.id,
                a.severity,
                a.status,
                a.type,
                a.subject,
                a.message,
                a.occurrences,
                a.last_seen_at.strftime("%Y-%m-%d %H:%M"),
            ]
            for a in found
        ]
    print_table(
        "Alerts",
        ["id", "severity", "status", "type", "subject", "message", "seen", "last seen"],
        rows,
    )


@alerts_app.command("resolve")
@handles_errors
def resolve(alert_id: int) -> None:
    with db() as session:
        alert = resolve_alert_by_id(session, alert_id)
        record(session, actor(), "alert.resolve", "alert", alert.id)
    console.print(f"alert {alert_id} resolved")


@jobs_app.callback()
def jobs(ctx: typer.Context) -> None:
    """Run the job scheduler alone (for processes started with ``serve --no-jobs``)."""
    if ctx.invoked_subcommand:
        return
    from fleetkeep.observability import configure_logging

    cfg = settings()
    configure_logging(cfg.log_level, cfg.log_format)
    scheduler = Scheduler(sessions(), builtin_jobs(cfg), cfg.job_tick_seconds)
    console.print(
        f"scheduler {scheduler.holder} running {len(scheduler.jobs)} job(s); Ctrl-C stops"
    )
    try:
        scheduler.run_forever()
    except KeyboardInterrupt:
        scheduler.stop()


@jobs_app.command("status")
def status() -> None:
    with db() as session:
        rows = [
            [
                lease.name,
                lease.last_started_at,
                lease.holder or "",
                run.status if run else "never",
                run.finished_at if run else "",
            ]
            for lease, run in job_status(session)
        ]
    print_table(
        "Jobs", ["job", "last started (UTC)", "running on", "last status", "last finished"], rows
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations (serve does this on start too)."""
    upgrade(engine())
    current, head = migration_state(engine())
    console.print(f"database at revision {current} (head {head})")


@db_app.command("status")
def db_status() -> None:
    from fleetkeep.db import make_engine

    current, head = migration_state(make_engine(settings().database_url))
    state = "current" if current == head else "needs upgrade"
    console.print(f"database revision {current}, code head {head}: {state}")
