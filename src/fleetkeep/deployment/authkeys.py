"""One-time activation keys: made for one user, consumed by their first use, even a failed one."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from fleetkeep.audit.service import Actor, record
from fleetkeep.db import utcnow
from fleetkeep.deployment import abuse
from fleetkeep.deployment.errors import ActivationRefused
from fleetkeep.deployment.models import AuthKey
from fleetkeep.errors import InvalidInput
from fleetkeep.identity.models import UserState
from fleetkeep.identity.service import get_user
from fleetkeep.tokens import display_prefix, hash_token, new_token

AUTH_KEY_PREFIX = "fkk"


def create_auth_key(
    session: Session, actor: Actor, user_id: int, expires_at: datetime | None = None
) -> tuple[AuthKey, str]:
    """Returns (the key, its secret); the secret is shown once."""
    user = get_user(session, user_id)
    if user.state is not UserState.ACTIVE:
        raise InvalidInput(f"user {user.email} is {user.state}", field="user_id")
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidInput("expires_at must be in the future", field="expires_at")
    plain, digest = new_token(AUTH_KEY_PREFIX)
    key = AuthKey(
        user_id=user.id,
        key_hash=digest,
        prefix=display_prefix(plain),
        created_by=actor.name,
        expires_at=expires_at,
    )
    session.add(key)
    session.flush()
    record(session, actor, "auth_key.create", "user", user.id, after={"auth_key_id": key.id})
    return key, plain


# The key and the refusals counted against the request's source.
_BY_HASH = select(AuthKey, abuse.FAILURES_BY_SOURCE).where(
    AuthKey.key_hash == bindparam("key_hash")
)


def check_auth_key(session: Session, secret: str, failures: dict[str, Any]) -> tuple[AuthKey, int]:
    """The usable key for this secret and the refusals from the request's source in the window,
    read in one query; or the refusal that explains why the key is not usable.

    ``failures`` are the parameters of ``abuse.failure_params``.
    """
    row = session.execute(_BY_HASH, {"key_hash": hash_token(secret), **failures}).first()
    if row is None:
        raise ActivationRefused("auth_key_invalid", "the auth key is not known to this server")
    key, by_source = row
    if key.consumed_at is not None:
        raise ActivationRefused("auth_key_used", "the auth key was already used once")
    if key.expires_at is not None and key.expires_at <= utcnow():
        raise ActivationRefused("auth_key_expired", "the auth key has expired")
    return key, by_source


def consume_auth_key(session: Session, key: AuthKey | None, *, secret: str | None = None) -> None:
    """Mark the key used (by object, or by secret after a rollback); a used key stays used."""
    digest = key.key_hash if key is not None else hash_token(secret or "")
    session.execute(
        update(AuthKey)
        .where(AuthKey.key_hash == digest, AuthKey.consumed_at.is_(None))
        .values(consumed_at=utcnow())
    )
