"""``fleetkeep keys …``: status, rotation and connector tokens."""

from __future__ import annotations

from typing import Annotated

import typer

from fleetkeep.clikit import actor, console, db, handles_errors, print_table, sessions, settings
from fleetkeep.keys import service
from fleetkeep.keys.hub import process_hub
from fleetkeep.keys.models import ProviderName
from fleetkeep.keys.service import Keyring

keys_app = typer.Typer(help="Organization keys and key connectors.", no_args_is_help=True)
tokens_app = typer.Typer(help="Key connector tokens.", no_args_is_help=True)
keys_app.add_typer(tokens_app, name="connector-token")


def _keyring() -> Keyring:
    return Keyring(settings(), sessions(), process_hub())


@keys_app.command("status")
@handles_errors
def status() -> None:
    """Provider, key version, connected connectors and last rotation."""
    with db() as session:
        state = service.key_status(session, _keyring())
    mark = "[green]connected[/]" if state.connected else "[bold red]NOT CONNECTED[/]"
    console.print(f"provider:      {state.provider}  {mark}  ({state.detail})", highlight=False)
    console.print(
        f"key version:   {state.key_version}"
        + (f"  check value {state.kcv}" if state.kcv else "")
        + (f"  {state.key_ref}" if state.key_ref else ""),
        highlight=False,
    )
    console.print(
        f"last rotation: {state.last_rotation_at:%Y-%m-%d %H:%M} UTC"
        f"  (scheduled every {state.rotation_days} days)"
        if state.rotation_days
        else f"last rotation: {state.last_rotation_at:%Y-%m-%d %H:%M} UTC  (no scheduled rotation)",
        highlight=False,
    )
    console.print(
        f"data keys:     {sum(state.wrapped_by_version.values())}"
        f"  (waiting for rewrap: {state.pending_rewrap})",
        highlight=False,
    )
    rows = [
        [
            c.host,
            c.version,
            c.replica,
            c.remote_addr,
            f"{c.last_seen_at:%H:%M:%S}",
            "yes" if c.holds_active_key else "no",
        ]
        for c in state.connectors
    ]
    print_table(
        "Key connectors",
        ["host", "version", "server replica", "from", "last seen", "holds active key"],
        rows,
    )


@keys_app.command("rotate")
@handles_errors
def rotate(
    provider: Annotated[
        ProviderName | None,
        typer.Option(help="switch to this provider (default: keep the active one)"),
    ] = None,
    kms_key_arn: Annotated[str | None, typer.Option(help="the KMS key ARN (awskms)")] = None,
    resume: Annotated[
        bool, typer.Option(help="only finish an interrupted rewrap, no new key version")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=10000)] = 500,
) -> None:
    """New key version, then rewrap every data key (no backup data is rewritten).

    Rotations that involve the key connector run in the server, where connectors connect:
    use POST /api/v1/keys/rotate for those.
    """
    keyring = _keyring()
    if resume:
        count = service.rewrap_pending(sessions(), keyring, batch_size=batch_size)
        console.print(f"rewrapped {count} data key(s)")
        return
    report = service.rotate_keys(
        sessions(),
        keyring,
        actor(),
        provider=provider,
        kms_key_arn=kms_key_arn,
        batch_size=batch_size,
    )
    console.print(
        f"key version {report.from_version} → {report.to_version} "
        f"({report.provider}); rewrapped {report.rewrapped} data key(s)"
    )


@tokens_app.command("create")
@handles_errors
def create_token(
    label: Annotated[str, typer.Option(help="e.g. the connector's host")] = "",
) -> None:
    with db() as session:
        plain, row = service.create_connector_token(session, actor(), label)
    console.print(f"connector token {row.id} ({row.prefix}…) created; shown once:")
    console.print(plain, highlight=False, soft_wrap=True)


@tokens_app.command("list")
@handles_errors
def list_tokens() -> None:
    with db() as session:
        rows = [
            [
                t.id,
                t.label,
                t.prefix + "…",
                f"{t.created_at:%Y-%m-%d %H:%M}",
                t.created_by,
                t.last_used_at and f"{t.last_used_at:%Y-%m-%d %H:%M}",
                t.revoked_at and f"{t.revoked_at:%Y-%m-%d %H:%M}",
            ]
            for t in service.list_connector_tokens(session)
        ]
    print_table(
        "Connector tokens", ["id", "label", "prefix", "created", "by", "last used", "revoked"], rows
    )


@tokens_app.command("revoke")
@handles_errors
def revoke_token(token_id: int) -> None:
    with db() as session:
        service.revoke_connector_token(session, actor(), token_id)
    console.print(
        f"connector token {token_id} revoked (connected connectors keep their "
        "session until they reconnect)"
    )
