"""``fleetkeep tokens|devices|deploy …``: deployment tokens, devices and installer/MDM config."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from fleetkeep.clikit import actor, console, db, fail, handles_errors, print_table, settings
from fleetkeep.deployment import activation, authkeys, devices, installer, mappings, mobile, tokens
from fleetkeep.deployment.models import Device, DeviceState, Platform, RestoreScope
from fleetkeep.errors import InvalidInput
from fleetkeep.identity.service import find_profile, find_user

tokens_app = typer.Typer(help="Mass deployment tokens.", no_args_is_help=True)
devices_app = typer.Typer(help="Devices (endpoints).", no_args_is_help=True)
deploy_app = typer.Typer(help="Deployment: installer commands, MDM config, mappings, auth keys.")

DEVICE_COLUMNS = ["id", "user", "name", "hostname", "platform", "state", "last seen", "agent"]


def _device_row(d: Device) -> list[object]:
    return [
        d.id,
        d.user.email,
        d.name,
        d.hostname,
        d.platform,
        d.state,
        d.last_seen_at.strftime("%Y-%m-%d %H:%M"),
        d.agent_version,
    ]


@tokens_app.command("create")
@handles_errors
def create_token(
    label: str,
    expires_in_days: Annotated[int | None, typer.Option(min=1, help="expire after N days")] = None,
    profile: Annotated[
        list[str] | None, typer.Option(help="profile name/id the token may activate into")
    ] = None,
) -> None:
    """Create a token; the secret is printed once."""
    expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
    with db() as session:
        scope = [find_profile(session, ref).id for ref in profile or []]
        token, plain = tokens.create_token(
            session, actor(), label, expires_at=expires, profile_ids=scope
        )
    console.print(f"deployment token {token.id} ({token.label}): [bold]{plain}[/]", soft_wrap=True)
    console.print("Shown once: store it now.", style="yellow")


@tokens_app.command("list")
@handles_errors
def list_tokens() -> None:
    with db() as session:
        usage = tokens.usage(session)
        rows = [
            [
                t.id,
                t.label,
                t.prefix + "…",
                tokens.status(t),
                ",".join(map(str, t.profile_ids)) or "any",
                t.expires_at,
                *usage.get(t.id, (0, None)),
            ]
            for t in tokens.list_tokens(session)
        ]
    print_table(
        "Deployment tokens",
        ["id", "label", "prefix", "status", "profiles", "expires", "uses", "last used"],
        rows,
    )


@tokens_app.command("revoke")
@handles_errors
def revoke_token(token_id: int) -> None:
    with db() as session:
        tokens.revoke_token(session, actor(), token_id)
    console.print(f"deployment token {token_id} revoked")


@tokens_app.command("expire")
@handles_errors
def expire_token(token_id: int) -> None:
    with db() as session:
        tokens.expire_token(session, actor(), token_id)
    console.print(f"deployment token {token_id} expired")


@devices_app.command("list")
@handles_errors
def list_devices(
    state: Annotated[DeviceState | None, typer.Option()] = None,
    platform: Annotated[Platform | None, typer.Option()] = None,
    user: Annotated[str | None, typer.Option(help="user email or id")] = None,
    q: Annotated[
        str | None, typer.Option("--search", "-q", help="hostname/name/serial/email")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 100,
) -> None:
    with db() as session:
        user_id = find_user(session, user).id if user else None
        found = devices.list_devices(
            session, state=state, platform=platform, user_id=user_id, q=q, limit=limit
        )
        print_table(f"Devices ({len(found)})", DEVICE_COLUMNS, [_device_row(d) for d in found])


@devices_app.command("show")
@handles_errors
def show_device(device: Annotated[str, typer.Argument(help="id or hostname")]) -> None:
    with db() as session:
        found = devices.find_device(session, device)
        for key, value in devices.view(found).items():
            console.print(f"{key:>16}: {value}", highlight=False)
        console.print(f"{'user':>16}: {found.user.email}", highlight=False)
        console.print(f"{'last seen':>16}: {found.last_seen_at}", highlight=False)


def _change(device: str, change: str) -> None:
    with db() as session:
        found = devices.find_device(session, device)
        {
            "disable": devices.disable_device,
            "enable": devices.enable_device,
            "decommission": devices.decommission_device,
        }[change](session, actor(), found.id)
        console.print(f"device {found.id} ({found.hostname}) is now [bold]{found.state}[/]")


@devices_app.command("disable")
@handles_errors
def disable_device(device: str) -> None:
    _change(device, "disable")


@devices_app.command("enable")
@handles_errors
def enable_device(device: str) -> None:
    _change(device, "enable")


@devices_app.command("decommission")
@handles_errors
def decommission_device(device: str) -> None:
    _change(device, "decommission")


@devices_app.command("replace")
@handles_errors
def replace_device(
    device: str,
    restore: Annotated[RestoreScope, typer.Option(help="what the new device restores")] = (
        RestoreScope.ALL
    ),
) -> None:
    """Mark a device for replacement: the user's next new device takes over its data."""
    with db() as session:
        found = devices.find_device(session, device)
        devices.mark_for_replacement(session, actor(), found.id, restore)
        console.print(
            f"device {found.id} ({found.hostname}) awaits its replacement (restore {restore})"
        )


@devices_app.command("explain")
@handles_errors
def explain(
    hostname: Annotated[str, typer.Option()],
    email: Annotated[str | None, typer.Option()] = None,
    upn: Annotated[str | None, typer.Option()] = None,
    username: Annotated[str | None, typer.Option()] = None,
    domain: Annotated[str | None, typer.Option()] = None,
    serial: Annotated[str, typer.Option()] = "",
    uuid: Annotated[str, typer.Option()] = "",
    platform: Annotated[Platform, typer.Option()] = Platform.WINDOWS,
    token: Annotated[str | None, typer.Option(help="also check this deployment token")] = None,
) -> None:
    """Replay the activation decision for a device and say why it matches or is refused."""
    req = activation.ActivationRequest(
        hostname=hostname,
        platform=platform,
        email=email,
        upn=upn,
        username=username,
        domain=domain,
        serial_number=serial,
        hardware_uuid=uuid,
        token=token,
        source="explain",
    )
    with db() as session:
        result = activation.explain(session, req)
    print_table(
        "Decision",
        ["rule", "outcome", "detail"],
        [[s.rule, s.outcome, s.detail] for s in result.steps],
    )
    verdict = result.outcome if result.code is None else f"refuse [{result.code}]"
    console.print(f"[bold]{verdict}[/]: {result.reason}", highlight=False)
    if result.code is not None:
        raise typer.Exit(1)


@deploy_app.command("command")
@handles_errors
def install_command(
    token: Annotated[str, typer.Option(help="a deployment token")],
    platform: Annotated[str, typer.Option(help="windows, macos or linux")],
    server: Annotated[str | None, typer.Option(help="default: the server's public URL")] = None,
    use_os_account: Annotated[
        bool, typer.Option(help="activate as the logged-in directory account (IMD v2)")
    ] = False,
) -> None:
    """Print the silent-install command line for SCCM, Intune, Jamf, LANDesk …"""
    url = server or settings().public_url
    typer.echo(
        installer.install_command(platform, url, token, use_os_account=use_os_account), nl=False
    )


@deploy_app.command("mobile-config")
@handles_errors
def mobile_config(
    token: Annotated[str, typer.Option(help="a deployment token")],
    fmt: Annotated[str, typer.Option("--format", help="android, android-json or ios")],
    server: Annotated[str | None, typer.Option(help="default: the server's public URL")] = None,
    mdm: Annotated[str, typer.Option(help="whose email variable to use")] = "generic",
    allow_copy: bool = True,
    allow_print: bool = True,
    allow_open_in: bool = True,
    output: Annotated[Path | None, typer.Option("-o", help="write to a file")] = None,
) -> None:
    """Print the MDM managed configuration (Android restrictions, Android Enterprise, iOS)."""
    values = mobile.managed_values(
        server or settings().public_url,
        token,
        mdm,
        mobile.MobilePolicy(allow_copy, allow_print, allow_open_in),
    )
    text = mobile.render(values, fmt)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        console.print(f"wrote {output}")


@deploy_app.command("import-mappings")
@handles_errors
def import_mappings(path: Path) -> None:
    """Import an IMD v4 device-mapping CSV: all rows or none."""
    if not path.is_file():
        fail(f"{path} is not a file", 2)
    data = path.read_bytes()
    try:
        with db() as session:
            count = mappings.import_mappings(session, actor(), data, path.name)
    except InvalidInput as exc:
        for row in exc.extra.get("failed_rows", []):
            console.print(f"line {row['line']}: {row['reason']}", highlight=False)
        raise
    console.print(f"imported {count} device mapping(s)")


@deploy_app.command("auth-key")
@handles_errors
def auth_key(
    user: Annotated[str, typer.Argument(help="user email or id")],
    expires_in_days: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Make a one-time activation key for a user (printed once)."""
    expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
    with db() as session:
        key, plain = authkeys.create_auth_key(
            session, actor(), find_user(session, user).id, expires
        )
    console.print(f"auth key {key.id} for user {key.user_id}: [bold]{plain}[/]", soft_wrap=True)
    console.print("Shown once; it works for one activation.", style="yellow")
