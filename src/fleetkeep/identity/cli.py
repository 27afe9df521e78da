"""``fleetkeep users|profiles|regions …``"""

from __future__ import annotations

from typing import Annotated

import typer

from fleetkeep.clikit import actor, console, db, handles_errors, print_table
from fleetkeep.identity import service
from fleetkeep.identity.models import User, UserState

users_app = typer.Typer(help="Users and their lifecycle.", no_args_is_help=True)
profiles_app = typer.Typer(help="Profiles (backup policies).", no_args_is_help=True)
regions_app = typer.Typer(help="Storage regions.", no_args_is_help=True)


def _user_row(u: User) -> list[object]:
    quota = f"{u.quota_value} {u.quota_unit}" if u.quota_value else "unlimited"
    return [
        u.id,
        u.email,
        u.display_name,
        u.state,
        u.profile.name,
        u.storage_region.name,
        quota,
        u.source,
    ]


USER_COLUMNS = ["id", "email", "name", "state", "profile", "region", "quota", "source"]


@users_app.command("list")
@handles_errors
def list_users(
    state: Annotated[UserState | None, typer.Option(help="only users in this state")] = None,
    q: Annotated[str | None, typer.Option("--search", "-q", help="text search")] = None,
    source: Annotated[str | None, typer.Option(help="e.g. manual, csv, scim")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 100,
) -> None:
    with db() as session:
        users = service.list_users(session, state=state, q=q, source=source, limit=limit)
        print_table(f"Users ({len(users)})", USER_COLUMNS, [_user_row(u) for u in users])


@users_app.command("add")
@handles_errors
def add_user(
    email: str,
    profile: Annotated[str, typer.Option(help="profile name or id")],
    region: Annotated[str, typer.Option(help="storage region name or id")],
    name: Annotated[str, typer.Option(help="display name")] = "",
    username: str = "",
    quota: Annotated[str | None, typer.Option(help="e.g. 50GB; 0 = unlimited")] = None,
) -> None:
    with db() as session:
        fields: dict[str, object] = {
            "email": email,
            "display_name": name,
            "username": username,
            "profile_id": service.find_profile(session, profile).id,
            "storage_region_id": service.find_region(session, region).id,
        }
        if quota is not None:
            fields["quota_value"], fields["quota_unit"] = service.parse_quota(quota)
        user = service.create_user(session, actor(), **fields)
        print_table("User created", USER_COLUMNS, [_user_row(user)])


def _transition(ref: str, target: UserState) -> None:
    with db() as session:
        user = service.find_user(session, ref)
        service.change_state(session, actor(), user, target)
        console.print(f"user {user.email} is now [bold]{user.state}[/]")


@users_app.command("preserve")
@handles_errors
def preserve(user: Annotated[str, typer.Argument(help="email or id")]) -> None:
    """Keep the user's data but stop their devices from backing up."""
    _transition(user, UserState.PRESERVED)


@users_app.command("restore")
@handles_errors
def restore(user: Annotated[str, typer.Argument(help="email or id")]) -> None:
    """Make a preserved (or recently deleted) user active again."""
    _transition(user, UserState.ACTIVE)


@users_app.command("delete")
@handles_errors
def delete(user: Annotated[str, typer.Argument(help="email or id")]) -> None:
    """Soft-delete: purged after the retention period, restorable until then."""
    _transition(user, UserState.DELETED)


@users_app.command("show")
@handles_errors
def show(user: Annotated[str, typer.Argument(help="email or id")]) -> None:
    with db() as session:
        found = service.find_user(session, user)
        print_table(found.email, ["field", "value"], list(service.user_view(found).items()))


@profiles_app.command("list")
@handles_errors
def list_profiles() -> None:
    with db() as session:
        rows = [
            [
                p.id,
                p.name,
                p.login_method,
                p.max_devices_per_user,
                f"{p.default_quota_value} {p.default_quota_unit}"
                if p.default_quota_value
                else "unlimited",
            ]
            for p in service.list_profiles(session)
        ]
    print_table("Profiles", ["id", "name", "login", "max devices", "default quota"], rows)


@profiles_app.command("add")
@handles_errors
def add_profile(
    name: str,
    max_devices: Annotated[int, typer.Option(min=1, max=100)] = 3,
    quota: Annotated[str, typer.Option(help="default quota, e.g. 50GB")] = "0",
) -> None:
    value, unit = service.parse_quota(quota)
    with db() as session:
        profile = service.create_profile(
            session,
            actor(),
            name=name,
            max_devices_per_user=max_devices,
            default_quota_value=value,
            default_quota_unit=unit,
        )
        console.print(f"profile [bold]{profile.name}[/] created (id {profile.id})")


@regions_app.command("list")
@handles_errors
def list_regions() -> None:
    with db() as session:
        rows = [[r.id, r.name, r.region, r.store_url] for r in service.list_regions(session)]
    print_table("Storage regions", ["id", "name", "region", "store"], rows)


@regions_app.command("add")
@handles_errors
def add_region(
    name: str,
    store_url: Annotated[str, typer.Option(help="file:///path or s3://bucket/prefix")],
    region: str = "",
) -> None:
    with db() as session:
        created = service.create_region(
            session, actor(), name=name, store_url=store_url, region=region
        )
        console.print(f"storage region [bold]{created.name}[/] created (id {created.id})")
