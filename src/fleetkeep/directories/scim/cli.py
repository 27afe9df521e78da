"""``fleetkeep scim token create|regenerate|show`` and ``fleetkeep scim mappings …``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from fleetkeep.clikit import actor, console, db, fail, handles_errors, print_table, settings
from fleetkeep.directories.scim import service
from fleetkeep.identity import service as identity

scim_app = typer.Typer(help="The SCIM 2.0 service provider (/scim/v2).", no_args_is_help=True)
token_app = typer.Typer(help="The bearer token identity providers use.", no_args_is_help=True)
mappings_app = typer.Typer(help="Rules giving SCIM users a profile.", no_args_is_help=True)
scim_app.add_typer(token_app, name="token")
scim_app.add_typer(mappings_app, name="mappings")

Days = Annotated[int, typer.Option(min=1, max=3650, help="validity in days")]


def _issue(days: int, regenerate: bool) -> None:
    with db() as session:
        plain, token = service.create_token(session, actor(), days=days, regenerate=regenerate)
    console.print(f"SCIM base URL: {settings().public_url.rstrip('/')}/scim/v2")
    console.print(f"token:         [bold]{plain}[/]  (shown once)", highlight=False)
    console.print(f"valid until:   {token.expires_at:%Y-%m-%d %H:%M} UTC")


@token_app.command("create")
@handles_errors
def create(days: Days = service.TOKEN_DAYS) -> None:
    """Make the SCIM token (refused while one is valid: regenerate instead)."""
    _issue(days, regenerate=False)


@token_app.command("regenerate")
@handles_errors
def regenerate(days: Days = service.TOKEN_DAYS) -> None:
    """Make a new SCIM token; the old one stops working at once."""
    _issue(days, regenerate=True)


@token_app.command("show")
@handles_errors
def show() -> None:
    with db() as session:
        token = service.active_token(session)
        if token is None:
            fail("no valid SCIM token; run 'fleetkeep scim token create'")
        console.print(
            f"{token.prefix}…  valid until {token.expires_at:%Y-%m-%d} (by {token.created_by})"
        )


@mappings_app.command("list")
@handles_errors
def list_mappings() -> None:
    with db() as session:
        rows = [
            [
                m.id,
                m.priority,
                json.dumps(m.rule),
                m.profile_id,
                m.storage_region_id,
                f"{m.quota_value} {m.quota_unit}" if m.quota_value is not None else "profile",
            ]
            for m in service.list_mappings(session)
        ]
    print_table("SCIM mappings", ["id", "priority", "rule", "profile", "region", "quota"], rows)


@mappings_app.command("add")
@handles_errors
def add_mapping(
    profile: Annotated[str, typer.Option(help="profile name or id")],
    region: Annotated[str, typer.Option(help="storage region name or id")],
    rule: Annotated[
        str, typer.Option(help='rule JSON, e.g. {"type": "group", "group": "Sales"}')
    ] = '{"type": "all"}',
    quota: Annotated[str | None, typer.Option(help="e.g. 50GB; default: the profile's")] = None,
    priority: Annotated[int, typer.Option(help="lower wins")] = 100,
) -> None:
    """Give SCIM users that match RULE a profile, a storage region and a quota."""
    try:
        parsed = json.loads(rule)
    except json.JSONDecodeError as exc:
        fail(f"--rule is not JSON: {exc}", 2)
    with db() as session:
        mapping = service.add_mapping(
            session,
            actor(),
            rule=parsed,
            profile_id=identity.find_profile(session, profile).id,
            storage_region_id=identity.find_region(session, region).id,
            quota=identity.parse_quota(quota) if quota is not None else None,
            priority=priority,
        )
        console.print(f"SCIM mapping {mapping.id} added (priority {mapping.priority})")


@mappings_app.command("remove")
@handles_errors
def remove_mapping(mapping_id: int) -> None:
    with db() as session:
        service.remove_mapping(session, actor(), mapping_id)
    console.print(f"SCIM mapping {mapping_id} removed")
