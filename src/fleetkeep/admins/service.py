"""Admin accounts, password sign-in with lockout, API tokens and console sessions."""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from fleetkeep.admins.models import Admin, ApiToken, LoginFailure, Role, TokenKind
from fleetkeep.audit.service import Actor, record
from fleetkeep.db import utcnow
from fleetkeep.errors import Conflict, Forbidden, InvalidInput, NotFound, RateLimited, Unauthorized
from fleetkeep.tokens import display_prefix, hash_token, new_token

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verifying against a dummy hash when the admin does not exist keeps timing uniform.

    Made on first use, not at import: hashing costs ~0.5 s of CPU that every CLI call paid."""
    return _hasher.hash(secrets.token_urlsafe(16))


MIN_PASSWORD_LENGTH = 12


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: an admin, with the role of the token used (never above theirs)."""

    admin_id: int
    email: str
    role: Role
    token_id: int

    @property
    def actor_name(self) -> str:
        return f"admin:{self.email}"


def generate_password() -> str:
    """A one-time password for a new admin: 20 URL-safe characters (~120 bits)."""
    return secrets.token_urlsafe(15)


def normalize_email(email: str) -> str:
    return email.strip().lower()


def create_admin(
    session: Session, actor: Actor, email: str, password: str, role: Role, name: str = ""
) -> Admin:
    normalized = normalize_email(email)
    if "@" not in normalized:
        raise InvalidInput("email must be an address like name@example.com", field="email")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(
            f"password must be at least {MIN_PASSWORD_LENGTH} characters", field="password"
        )
    if session.scalar(select(Admin.id).where(Admin.email_normalized == normalized)):
        raise Conflict(f"an admin with email {email} already exists", code="admin_exists")
    admin = Admin(
        email=email.strip(),
        email_normalized=normalized,
        name=name,
        role=role,
        password_hash=_hasher.hash(password),
    )
    session.add(admin)
    session.flush()
    record(session, actor, "admin.create", "admin", admin.id, after=_admin_view(admin))
    return admin


def count_admins(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Admin)) or 0


def list_admins(session: Session) -> list[Admin]:
    return list(session.scalars(select(Admin).order_by(Admin.id)))


def set_password(session: Session, actor: Actor, admin_id: int, password: str) -> None:
    admin = _get_admin(session, admin_id)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(
            f"password must be at least {MIN_PASSWORD_LENGTH} characters", field="password"
        )
    admin.password_hash = _hasher.hash(password)
    record(session, actor, "admin.set_password", "admin", admin.id)


def sign_in(
    session: Session,
    email: str,
    password: str,
    source: str,
    *,
    max_failures: int,
    lockout_seconds: int,
    session_hours: int,
) -> tuple[Admin, str]:
    """Check a password and open a console session; returns (admin, session secret).

    After ``max_failures`` failures within ``lockout_seconds`` for the same email, or for the
    same source address (x4, so one office behind NAT is not locked out by one user), further
    attempts are refused with 429 until the window passes, even with the right password.
    """
    normalized = normalize_email(email)
    window_start = utcnow() - timedelta(seconds=lockout_seconds)
    by_email = _failures_since(session, LoginFailure.email_normalized == normalized, window_start)
    by_source = _failures_since(session, LoginFailure.source == source, window_start)
    if by_email >= max_failures or by_source >= max_failures * 4:
        raise RateLimited(
            "too many failed sign-ins; try again later",
            retry_after=lockout_seconds,
            code="login_locked",
        )
    admin = session.scalar(select(Admin).where(Admin.email_normalized == normalized))
    ok = False
    try:
        ok = _hasher.verify(admin.password_hash if admin else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok or admin is None or admin.disabled:
        session.add(LoginFailure(email_normalized=normalized, source=source))
        record(session, Actor(f"anonymous@{source}"), "admin.sign_in_failed", "admin", normalized)
        raise Unauthorized("wrong email or password", code="bad_credentials")
    if _hasher.check_needs_rehash(admin.password_hash):
        admin.password_hash = _hasher.hash(password)
    session.execute(delete(LoginFailure).where(LoginFailure.email_normalized == normalized))
    admin.last_login_at = utcnow()
    plain, _token = _issue(
        session,
        admin,
        TokenKind.SESSION,
        "console",
        None,
        utcnow() + timedelta(hours=session_hours),
    )
    record(session, Actor(f"admin:{admin.email}"), "admin.sign_in", "admin", admin.id)
    return admin, plain


def create_api_token(
    session: Session,
    actor: Actor,
    admin_id: int,
    label: str,
    role: Role | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiToken, str]:
    """A token acts with ``role`` (default: the admin's own); it can never exceed the admin's."""
    admin = _get_admin(session, admin_id)
    if role is not None and not admin.role.covers(role):
        raise Forbidden(f"a {admin.role} cannot create a token with role {role}")
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidInput("expires_at must be in the future", field="expires_at")
    plain, token = _issue(session, admin, TokenKind.API, label, role, expires_at)
    record(
        session,
        actor,
        "api_token.create",
        "api_token",
        token.id,
        after={"label": label, "admin_id": admin.id, "role": str(role or admin.role)},
    )
    return token, plain


def list_api_tokens(session: Session, admin_id: int | None = None) -> list[ApiToken]:
    query = select(ApiToken).where(ApiToken.kind == TokenKind.API).order_by(ApiToken.id)
    if admin_id is not None:
        query = query.where(ApiToken.admin_id == admin_id)
    return list(session.scalars(query))


def revoke_api_token(session: Session, actor: Actor, token_id: int) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None or token.kind is not TokenKind.API:
        raise NotFound(f"API token {token_id} does not exist")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        record(session, actor, "api_token.revoke", "api_token", token.id)
    return token


def sign_out(session: Session, plain: str) -> None:
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(plain)))
    if token is not None and token.revoked_at is None:
        token.revoked_at = utcnow()


def authenticate(session: Session, plain: str) -> Principal:
    """Resolve a bearer secret (API token or console session) to a principal, or refuse."""
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(plain)))
    now = utcnow()
    if token is None or token.revoked_at is not None:
        raise Unauthorized("the token is not valid", code="invalid_token")
    if token.expires_at is not None and token.expires_at <= now:
        raise Unauthorized("the token has expired", code="token_expired")
    admin = session.get(Admin, token.admin_id)
    if admin is None or admin.disabled:
        raise Unauthorized("the token's admin is disabled", code="invalid_token")
    # Recording every use would write on every read; a minute's precision is plenty.
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        token.last_used_at = now
    role = admin.role if token.role is None or not admin.role.covers(token.role) else token.role
    return Principal(admin_id=admin.id, email=admin.email, role=role, token_id=token.id)


def _issue(
    session: Session,
    admin: Admin,
    kind: TokenKind,
    label: str,
    role: Role | None,
    expires_at: datetime | None,
) -> tuple[str, ApiToken]:
    plain, digest = new_token("fka" if kind is TokenKind.API else "fks")
    token = ApiToken(
        admin_id=admin.id,
        kind=kind,
        label=label,
        prefix=display_prefix(plain),
        token_hash=digest,
        role=role,
        expires_at=expires_at,
    )
    session.add(token)
    session.flush()
    return plain, token


def _failures_since(session: Session, condition: object, since: datetime) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(LoginFailure)
            .where(
                condition,  # type: ignore[arg-type]
                LoginFailure.at >= since,
            )
        )
        or 0
    )


def _get_admin(session: Session, admin_id: int) -> Admin:
    admin = session.get(Admin, admin_id)
    if admin is None:
        raise NotFound(f"admin {admin_id} does not exist")
    return admin


def _admin_view(admin: Admin) -> dict[str, object]:
    return {"email": admin.email, "name": admin.name, "role": str(admin.role)}
