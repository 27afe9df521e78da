"""Mass deployment tokens: created with a label, optional expiry and profile scope; revocable.

The secret is shown once at creation and stored as a SHA-256 hash (``fleetkeep.tokens``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, func, insert, select
from sqlalchemy.orm import Session

from fleetkeep.audit.service import Actor, record
from fleetkeep.db import utcnow
from fleetkeep.deployment.errors import ActivationRefused
from fleetkeep.deployment.models import DeploymentToken, TokenUse
from fleetkeep.errors import Conflict, InvalidInput, NotFound
from fleetkeep.identity.service import get_profile
from fleetkeep.tokens import display_prefix, new_token

TOKEN_PREFIX = "fkt"  # noqa: S105 - a kind prefix, not a secret


def create_token(
    session: Session,
    actor: Actor,
    label: str,
    *,
    expires_at: datetime | None = None,
    profile_ids: list[int] | None = None,
) -> tuple[DeploymentToken, str]:
    """Returns (the token, its secret). The secret is not stored and cannot be shown again."""
    if not label.strip():
        raise InvalidInput("label must not be empty", field="label")
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidInput("expires_at must be in the future", field="expires_at")
    scope = sorted(set(profile_ids or []))
    for profile_id in scope:
        get_profile(session, profile_id)
    plain, digest = new_token(TOKEN_PREFIX)
    token = DeploymentToken(
        label=label.strip(),
        prefix=display_prefix(plain),
        token_hash=digest,
        profile_ids=scope,
        created_by=actor.name,
        expires_at=expires_at,
    )
    session.add(token)
    session.flush()
    record(
        session, actor, "deployment_token.create", "deployment_token", token.id, after=view(token)
    )
    return token, plain


def list_tokens(session: Session, *, include_inactive: bool = True) -> list[DeploymentToken]:
    tokens = list(session.scalars(select(DeploymentToken).order_by(DeploymentToken.id)))
    if include_inactive:
        return tokens
    return [t for t in tokens if status(t) == "active"]


def get_token(session: Session, token_id: int) -> DeploymentToken:
    token = session.get(DeploymentToken, token_id)
    if token is None:
        raise NotFound(f"deployment token {token_id} does not exist")
    return token


def revoke_token(session: Session, actor: Actor, token_id: int) -> DeploymentToken:
    token = get_token(session, token_id)
    if token.revoked_at is not None:
        raise Conflict(f"deployment token {token_id} is already revoked", code="already_revoked")
    before = view(token)
    token.revoked_at = utcnow()
    record(
        session,
        actor,
        "deployment_token.revoke",
        "deployment_token",
        token.id,
        before=before,
        after=view(token),
    )
    return token


def expire_token(session: Session, actor: Actor, token_id: int) -> DeploymentToken:
    """Make the token expire now; unlike revoke this reads as 'its campaign is over'."""
    token = get_token(session, token_id)
    before = view(token)
    if token.expires_at is None or token.expires_at > utcnow():
        token.expires_at = utcnow()
    record(
        session,
        actor,
        "deployment_token.expire",
        "deployment_token",
        token.id,
        before=before,
        after=view(token),
    )
    return token


def status(token: DeploymentToken) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= utcnow():
        return "expired"
    return "active"


def ensure_live(token: DeploymentToken | None) -> DeploymentToken:
    """The token found for a secret if it is live, else the refusal that explains why not."""
    if token is None:
        raise ActivationRefused("token_invalid", "the deployment token is not known to this server")
    state = status(token)
    if state == "revoked":
        raise ActivationRefused(
            "token_revoked", f"deployment token {token.label!r} was revoked", token_id=token.id
        )
    if state == "expired":
        raise ActivationRefused(
            "token_expired", f"deployment token {token.label!r} has expired", token_id=token.id
        )
    return token


def record_use(session: Session, token_id: int, device_id: int) -> None:
    session.execute(_RECORD_USE, {"token_id": token_id, "device_id": device_id})


# Core, not the ORM: no unit-of-work flush on every activation.
_RECORD_USE = insert(cast(Table, TokenUse.__table__))


def usage(session: Session) -> dict[int, tuple[int, datetime | None]]:
    """token id → (activations, last activation)."""
    rows = session.execute(
        select(TokenUse.token_id, func.count(), func.max(TokenUse.at)).group_by(TokenUse.token_id)
    )
    return {token_id: (count, last) for token_id, count, last in rows}


def view(token: DeploymentToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "label": token.label,
        "prefix": token.prefix,
        "profile_ids": token.profile_ids,
        "expires_at": token.expires_at.isoformat() if token.expires_at else None,
        "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
    }
