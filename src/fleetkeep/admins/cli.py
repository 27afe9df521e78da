"""``fleetkeep admins …`` and ``fleetkeep api-tokens …``"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from fleetkeep.admins import service
from fleetkeep.admins.models import Role
from fleetkeep.clikit import actor, console, db, fail, handles_errors, print_table

admins_app = typer.Typer(help="Administrators.", no_args_is_help=True)
tokens_app = typer.Typer(help="Admin API tokens.", no_args_is_help=True)


def read_password(from_stdin: bool) -> str | None:
    if not from_stdin:
        return None
    password = sys.stdin.readline().rstrip("\n")
    if not password:
        fail("no password on standard input", 2)
    return password


@admins_app.command("list")
@handles_errors
def list_admins() -> None:
    with db() as session:
        rows = [
            [a.id, a.email, a.role, a.disabled, a.last_login_at]
            for a in service.list_admins(session)
        ]
    print_table("Admins", ["id", "email", "role", "disabled", "last sign-in"], rows)


@admins_app.command("create")
@handles_errors
def create_admin(
    email: str,
    role: Annotated[Role, typer.Option()] = Role.ADMIN,
    password_stdin: Annotated[bool, typer.Option(help="read the password from stdin")] = False,
) -> None:
    password = read_password(password_stdin) or service.generate_password()
    with db() as session:
        admin = service.create_admin(session, actor(), email, password, role)
    console.print(f"admin [bold]{admin.email}[/] ({admin.role}) created")
    if not password_stdin:
        console.print(f"one-time password: [bold]{password}[/] (shown once; change it)")


def _admin_id(session: object, email: str) -> int:
    for admin in service.list_admins(session):  # type: ignore[arg-type]
        if admin.email_normalized == email.strip().lower():
            return admin.id
    fail(f"no admin with email {email}")


@tokens_app.command("create")
@handles_errors
def create_token(
    label: str,
    admin: Annotated[str, typer.Option(help="the admin's email")],
    role: Annotated[Role | None, typer.Option(help="default: the admin's role")] = None,
) -> None:
    with db() as session:
        token, plain = service.create_api_token(
            session, actor(), _admin_id(session, admin), label, role
        )
    console.print(f"token {token.id} ({label}): [bold]{plain}[/]")
    console.print("Shown once: store it now.", style="yellow")


@tokens_app.command("list")
@handles_errors
def list_tokens() -> None:
    with db() as session:
        rows = [
            [
                t.id,
                t.admin_id,
                t.label,
                t.prefix + "…",
                t.role or "(admin's)",
                t.created_at,
                t.last_used_at,
                t.revoked_at,
            ]
            for t in service.list_api_tokens(session)
        ]
    print_table(
        "API tokens",
        ["id", "admin", "label", "prefix", "role", "created", "last used", "revoked"],
        rows,
    )


@tokens_app.command("revoke")
@handles_errors
def revoke_token(token_id: int) -> None:
    with db() as session:
        service.revoke_api_token(session, actor(), token_id)
    console.print(f"token {token_id} revoked")


@admins_app.command("reset-password")
@handles_errors
def reset_password(
    email: str,
    password_stdin: Annotated[bool, typer.Option(help="read the password from stdin")] = False,
) -> None:
    """Set a new password (generated and shown once unless given on stdin)."""
    password = read_password(password_stdin) or service.generate_password()
    with db() as session:
        service.set_password(session, actor(), _admin_id(session, email), password)
    console.print(f"password of {email} changed")
    if not password_stdin:
        console.print(f"new password: [bold]{password}[/] (shown once)")
