"""``fleetkeep check`` and ``fleetkeep restore``: thin adapters over vault's services."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleetkeep.backup import Snapshot
from fleetkeep.clikit import console, db, err_console, fail, handles_errors, print_table, sessions
from fleetkeep.clikit import settings as load_settings
from fleetkeep.keys.hub import process_hub
from fleetkeep.keys.models import ProviderName
from fleetkeep.keys.service import Keyring


@handles_errors
def check(
    user: Annotated[str | None, typer.Option(help="the user's email or id")] = None,
    all_users: Annotated[bool, typer.Option("--all", help="every user with data")] = False,
    read_data: Annotated[
        bool, typer.Option("--read-data", help="also read, hash and decrypt every pack")
    ] = False,
) -> None:
    """Verify that every snapshot's chunks exist (and, with --read-data, decrypt).

    Exit code 1 when any repository is damaged or cannot be opened; each finding names the
    snapshot, the file path, the pack and the blob.
    """
    from fleetkeep.identity.service import find_user
    from fleetkeep.vault.maintenance import check_users, users_with_data

    if (user is None) == (not all_users):
        fail("name one user with --user, or check every user with --all", 2)
    with db() as session:
        ids = [find_user(session, user).id] if user is not None else users_with_data(session)
    factory = sessions()
    keyring = Keyring(load_settings(), factory, process_hub())
    damaged = 0
    for result in check_users(factory, keyring, ids, read_data=read_data):
        if result.missing:
            console.print(f"{result.email}: no repository yet", highlight=False)
            continue
        if result.error is not None:
            damaged += 1
            err_console.print(f"[red]{result.email}: cannot check:[/] {result.error}")
            continue
        report = result.report
        assert report is not None
        summary = (
            f"{report.snapshots} snapshots, {report.trees} trees, {report.files} files, "
            f"{report.packs} packs" + (f" ({report.packs_read} read)" if read_data else "")
        )
        if report.ok:
            console.print(f"{result.email}: ok — {summary}", highlight=False)
            continue
        damaged += 1
        console.print(
            f"[red]{result.email}: {len(report.damage)} problem(s)[/] — {summary}",
            highlight=False,
        )
        # One finding per line with full ids, so the output can be grepped and scripted.
        for d in report.damage:
            where = " ".join(
                f"{label}={value}"
                for label, value in (
                    ("snapshot", d.snapshot),
                    ("path", d.path),
                    ("pack", d.pack),
                    ("blob", d.blob),
                )
                if value
            )
            console.print(f"  {d.kind} {where}: {d.detail}", highlight=False, markup=False)
    if damaged:
        fail(f"{damaged} repositor{'y' if damaged == 1 else 'ies'} damaged or unreadable", 1)


@handles_errors
def restore(
    from_store: Annotated[
        str,
        typer.Option(
            help="the region's store URL (with --user) or a user's repository URL: "
            "file:///path or s3://bucket/prefix"
        ),
    ],
    target: Annotated[Path | None, typer.Option(help="the folder to restore into")] = None,
    key_provider: Annotated[
        ProviderName, typer.Option(help="who holds the organization key")
    ] = ProviderName.LOCAL,
    key_file: Annotated[
        Path | None,
        typer.Option(help="the key file (local: the server's; connector: the customer's)"),
    ] = None,
    user: Annotated[str | None, typer.Option(help="the user's email or id")] = None,
    snapshot: Annotated[
        str | None, typer.Option(help="snapshot id or prefix (default: the latest)")
    ] = None,
    device: Annotated[str | None, typer.Option(help="the latest snapshot of this device")] = None,
    path: Annotated[
        list[str] | None, typer.Option(help="restore only this path (repeatable)")
    ] = None,
    list_snapshots: Annotated[
        bool, typer.Option("--list", help="list the snapshots and restore nothing")
    ] = False,
) -> None:
    """Restore from the store and the organization key alone: no database needed.

    The repository keeps a copy of the user's wrapped data key (keys/), which the key file or
    AWS KMS unwraps. Nothing is written outside --target.
    """
    from fleetkeep.vault.recovery import open_recovered_repository

    if key_provider is not ProviderName.AWSKMS and key_file is None:
        key_file = load_settings().resolved_key_file
    escrowed, repo = open_recovered_repository(from_store, key_provider, key_file, user)
    snaps = repo.list_snapshots()
    if list_snapshots:
        print_table(
            f"snapshots of user {escrowed.user_id}",
            ["id", "time", "device", "hostname", "paths"],
            [
                (s.id[:12], s.time.isoformat(), s.device, s.hostname, ", ".join(s.paths))
                for s in snaps
            ],
        )
        return
    if target is None:
        fail("name the folder to restore into with --target", 2)
    chosen = _choose(repo.get_snapshot(snapshot) if snapshot else None, snaps, device)
    stats = repo.restore(chosen, target, path or None)
    console.print(
        f"restored snapshot {chosen.id[:12]} ({chosen.time.isoformat()}, device "
        f"{chosen.device}) of user {escrowed.user_id} to {target}: {stats.files} files, "
        f"{stats.dirs} folders, {stats.symlinks} links, {stats.bytes} bytes"
        + (f", {stats.warnings} warning(s)" if stats.warnings else ""),
        highlight=False,
    )


def _choose(named: Snapshot | None, snaps: list[Snapshot], device: str | None) -> Snapshot:
    if named is not None:
        return named
    candidates = [s for s in snaps if device is None or s.device == device]
    if not candidates:
        fail("the repository has no snapshot" + (f" of device {device}" if device else ""), 1)
    return candidates[-1]
