"""``fleetkeep users import FILE.csv [--dry-run]``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleetkeep.clikit import actor, console, handles_errors, print_table, sessions, settings
from fleetkeep.directories import csv_import


@handles_errors
def import_users(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="UTF-8 CSV file")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="show the plan, change nothing")
    ] = False,
    profile: Annotated[str, typer.Option(help="profile for rows without one")] = "",
    region: Annotated[str, typer.Option(help="storage region for rows without one")] = "",
) -> None:
    """Import users from CSV (email*, username, name, profile, region, quota).

    The file is checked as a whole first; rejected rows are listed with their line number and
    the valid ones are applied. Importing the same file again changes nothing.
    """
    result = csv_import.import_users(
        sessions(),
        actor(),
        settings().data_dir,
        file.read_bytes(),
        filename=file.name,
        dry_run=dry_run,
        default_profile=profile,
        default_region=region,
    )
    run = result.run
    counts = run.report.get("counts", {})
    verb = "would" if dry_run else "did"
    console.print(
        f"import {run.id} ({run.status}): {verb} create {counts.get('create', 0)}, "
        f"update {counts.get('update', 0)}, reactivate {counts.get('reactivate', 0)}; "
        f"{counts.get('unchanged', 0)} unchanged; {len(result.errors)} rejected",
        highlight=False,
    )
    if result.errors:
        print_table(
            "Rejected rows",
            ["line", "email", "reason"],
            [[e["line"], e["email"], e["reason"]] for e in result.errors],
        )
        raise typer.Exit(3)
