"""Request-scoped dependencies: the database session and the authenticated admin.

Roles are enforced for the whole ``/api/v1`` router by ``authorize``: reads need read-only,
writes need admin, and routes that declare ``Depends(owner_only)`` need owner. A new route is
therefore protected by default; nothing has to remember to add a check.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from fleetkeep.admins.models import Role
from fleetkeep.admins.service import Principal, authenticate
from fleetkeep.audit.service import Actor
from fleetkeep.errors import Forbidden, Unauthorized
from fleetkeep.observability import request_id_var
from fleetkeep.settings import Settings

SESSION_COOKIE = "fleetkeep_session"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


async def _session(request: Request) -> AsyncIterator[Session]:
    # Async so that making and closing the session (no I/O) costs no thread-pool round trip;
    # only a transaction the handler left open is committed (or rolled back) in a thread.
    session: Session = request.app.state.sessionmaker()
    try:
        yield session
        if session.in_transaction():
            await run_in_threadpool(session.commit)
    except BaseException:
        if session.in_transaction():
            await run_in_threadpool(session.rollback)
        raise
    finally:
        session.close()


# "function" scope: commit before the response is sent, so a client that reads right after
# a write (on any replica) sees it.
DbSession = Annotated[Session, Depends(_session, scope="function")]


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


AppSettings = Annotated[Settings, Depends(get_settings)]


def bearer_secret(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.cookies.get(SESSION_COOKIE)


def current_principal(request: Request, session: DbSession) -> Principal:
    secret = bearer_secret(request)
    if not secret:
        raise Unauthorized("sign in or send 'Authorization: Bearer <token>'", code="no_token")
    principal = authenticate(session, secret)
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def authorize(request: Request, principal: CurrentPrincipal) -> Principal:
    needed = Role.READ_ONLY if request.method in SAFE_METHODS else Role.ADMIN
    if not principal.role.covers(needed):
        raise Forbidden(
            f"the {principal.role} role cannot {request.method} here", code="role_forbidden"
        )
    return principal


def owner_only(principal: CurrentPrincipal) -> Principal:
    if not principal.role.covers(Role.OWNER):
        raise Forbidden("only an owner can do this", code="role_forbidden")
    return principal


def actor(request: Request, principal: CurrentPrincipal) -> Actor:
    return Actor(
        principal.actor_name,
        request_id=request_id_var.get(),
        source_ip=request.client.host if request.client else None,
    )


CurrentActor = Annotated[Actor, Depends(actor)]
