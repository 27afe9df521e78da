"""Sign-in, admins and API tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status

from fleetkeep.admins import service
from fleetkeep.admins.models import ApiToken
from fleetkeep.admins.schemas import (
    AdminCreate,
    AdminOut,
    SignedIn,
    SignIn,
    TokenCreate,
    TokenCreated,
    TokenOut,
)
from fleetkeep.admins.service import Principal
from fleetkeep.errors import Forbidden, Unauthorized
from fleetkeep.web.deps import (
    SESSION_COOKIE,
    AppSettings,
    CurrentActor,
    CurrentPrincipal,
    DbSession,
    bearer_secret,
    owner_only,
)

public = APIRouter(tags=["auth"])
router = APIRouter(tags=["admins"])


@public.post("/auth/sign-in")
def sign_in(
    body: SignIn, request: Request, response: Response, session: DbSession, settings: AppSettings
) -> SignedIn:
    source = request.client.host if request.client else "unknown"
    try:
        admin, token = service.sign_in(
            session,
            body.email,
            body.password,
            source,
            max_failures=settings.login_max_failures,
            lockout_seconds=settings.login_lockout_seconds,
            session_hours=settings.session_hours,
        )
    except Unauthorized:
        session.commit()  # keep the failure on record: it feeds the lockout
        raise
    principal = service.authenticate(session, token)
    record = session.get(ApiToken, principal.token_id)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=settings.public_url.startswith("https"),
        max_age=settings.session_hours * 3600,
    )
    return SignedIn(
        token=token,
        expires_at=record.expires_at if record else None,
        admin=AdminOut.model_validate(admin),
    )


@public.post("/auth/sign-out", status_code=status.HTTP_204_NO_CONTENT)
def sign_out(request: Request, response: Response, session: DbSession) -> None:
    secret = bearer_secret(request)
    if secret:
        service.sign_out(session, secret)
    response.delete_cookie(SESSION_COOKIE)


@router.get("/me")
def me(principal: CurrentPrincipal, session: DbSession) -> AdminOut:
    return AdminOut.model_validate(service._get_admin(session, principal.admin_id))


@router.get("/admins")
def list_admins(session: DbSession) -> list[AdminOut]:
    return [AdminOut.model_validate(a) for a in service.list_admins(session)]


@router.post("/admins", status_code=status.HTTP_201_CREATED)
def create_admin(
    body: AdminCreate,
    session: DbSession,
    actor: CurrentActor,
    _owner: Annotated[Principal, Depends(owner_only)],
) -> AdminOut:
    admin = service.create_admin(session, actor, body.email, body.password, body.role, body.name)
    return AdminOut.model_validate(admin)


@router.get("/tokens")
def list_tokens(principal: CurrentPrincipal, session: DbSession) -> list[TokenOut]:
    """Your own tokens; an owner sees everyone's."""
    admin_id = None if principal.role == "owner" else principal.admin_id
    return [TokenOut.model_validate(t) for t in service.list_api_tokens(session, admin_id)]


@router.post("/tokens", status_code=status.HTTP_201_CREATED)
def create_token(
    body: TokenCreate, principal: CurrentPrincipal, session: DbSession, actor: CurrentActor
) -> TokenCreated:
    token, plain = service.create_api_token(
        session, actor, principal.admin_id, body.label, body.role, body.expires_at
    )
    return TokenCreated(token=plain, **TokenOut.model_validate(token).model_dump())


@router.delete("/tokens/{token_id}")
def revoke_token(
    token_id: int, principal: CurrentPrincipal, session: DbSession, actor: CurrentActor
) -> TokenOut:
    owned = {t.id for t in service.list_api_tokens(session, principal.admin_id)}
    if token_id not in owned and principal.role != "owner":
        raise Forbidden("you can revoke only your own tokens", code="role_forbidden")
    return TokenOut.model_validate(service.revoke_api_token(session, actor, token_id))
