"""Envelope encryption: one random DEK per user, wrapped by the active organization key.

``get_user_dek`` is what the rest of the server calls. Everything that needs a provider goes
through a ``Keyring`` (one per process or app): it holds the providers of each key version,
the DEK cache and the connector hub, and raises or resolves the "key provider not connected"
alert as providers fail and recover.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.alerts.models import Severity
from fleetkeep.alerts.service import raise_alert, resolve_alert
from fleetkeep.audit.service import Actor, record
from fleetkeep.db import transaction, utcnow
from fleetkeep.errors import FleetkeepError, InvalidInput, NotFound
from fleetkeep.identity.models import User
from fleetkeep.keys.cache import DekCache
from fleetkeep.keys.errors import (
    ConnectorTokenInvalid,
    KeyCheckMismatch,
    KeyFileInvalid,
    KeyProviderNotConnected,
    RotationRefused,
)
from fleetkeep.keys.hub import ConnectorHub, LinkInfo
from fleetkeep.keys.keyfile import add_key, ensure_local_key
from fleetkeep.keys.models import (
    ConnectorSession,
    ConnectorToken,
    KeyVersion,
    ProviderName,
    WrappedKey,
)
from fleetkeep.keys.providers.awskms import KmsProvider, describe_key
from fleetkeep.keys.providers.base import KeyProvider, VersionInfo
from fleetkeep.keys.providers.connector import ConnectorProvider
from fleetkeep.keys.providers.local import LocalProvider
from fleetkeep.keys.wrapping import DEK_BYTES
from fleetkeep.settings import Settings
from fleetkeep.tokens import display_prefix, hash_token, new_token

log = logging.getLogger("fleetkeep.keys")

ALERT_TYPE = "key_provider_not_connected"
ALERT_SUBJECT = "key-provider"
# A connector session not refreshed for this long is shown as gone (its replica died).
CONNECTOR_STALE = timedelta(seconds=90)
_ALERT_EVERY = 10.0  # seconds between updates of the open alert while the outage lasts
REPLICA = f"{socket.gethostname()}:{os.getpid()}"


def user_context(user_id: int) -> str:
    """The authenticated context of a user's wrapped DEK."""
    return f"user:{user_id}"


class Keyring:
    """Providers by key version, the DEK cache, and provider health for one process."""

    def __init__(
        self, settings: Settings, factory: sessionmaker[Session], hub: ConnectorHub
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.hub = hub
        self.cache = DekCache(ttl_seconds=settings.key_cache_seconds)
        self.unwraps = 0
        self._providers: dict[int, KeyProvider] = {}
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._alerted_at = 0.0
        hub.timeout = settings.key_request_timeout
        hub.on_empty(self.cache.clear)

    def provider(self, info: VersionInfo) -> KeyProvider:
        with self._lock:
            found = self._providers.get(info.version)
            if found is None or found.info != info:
                found = self._providers[info.version] = self._open(info)
            return found

    def _open(self, info: VersionInfo) -> KeyProvider:
        if info.provider is ProviderName.LOCAL:
            return LocalProvider(info, self.settings.resolved_key_file)
        if info.provider is ProviderName.CONNECTOR:
            return ConnectorProvider(info, self.hub)
        return KmsProvider(info)

    def wrap(self, info: VersionInfo, dek: bytes, context: str) -> bytes:
        return self._guarded(info, lambda p: p.wrap(dek, context))

    def unwrap(self, info: VersionInfo, wrapped: bytes, context: str) -> bytes:
        dek = self._guarded(info, lambda p: p.unwrap(wrapped, context))
        self.unwraps += 1
        return dek

    def forget(self) -> None:
        """Drop cached DEKs and providers (after a rotation or a provider change)."""
        self.cache.clear()
        with self._lock:
            self._providers.clear()

    def _guarded(self, info: VersionInfo, call: Callable[[KeyProvider], bytes]) -> bytes:
        try:
            result = call(self.provider(info))
        except (KeyProviderNotConnected, KeyFileInvalid, KeyCheckMismatch) as exc:
            # The provider cannot serve this key version at all (unreachable, refusing, a
            # missing key file, another organization's key): every DEK is out of reach.
            self._provider_down(info, exc)
            raise
        if self._down_since is not None:
            self._down_since = None
            with transaction(self.factory) as session:
                resolve_alert(session, ALERT_TYPE, ALERT_SUBJECT)
        return result

    def _provider_down(self, info: VersionInfo, exc: FleetkeepError) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        elif now - self._alerted_at < _ALERT_EVERY:
            return
        self._alerted_at = now
        self.cache.clear()
        log.warning(
            "key provider unavailable",
            extra={"provider": info.provider, "key_version": info.version},
        )
        with transaction(self.factory) as session:
            raise_provider_alert(session, info.provider, exc.detail)


def raise_provider_alert(session: Session, provider: ProviderName, reason: str) -> None:
    title = {
        ProviderName.CONNECTOR: "Key connector not connected",
        ProviderName.AWSKMS: "AWS KMS unavailable",
        ProviderName.LOCAL: "Local key file unusable",
    }[provider]
    raise_alert(
        session,
        ALERT_TYPE,
        ALERT_SUBJECT,
        Severity.CRITICAL,
        title,
        {"provider": str(provider), "reason": reason},
    )


def resolve_provider_alert(session: Session) -> None:
    resolve_alert(session, ALERT_TYPE, ALERT_SUBJECT)


# --- key versions ----------------------------------------------------------------------------


def init_keys(session: Session, settings: Settings) -> KeyVersion:
    """Create the local key file and key version 1 unless a key version exists (``init``)."""
    active = _active_row(session)
    if active is not None:
        return active
    ekey = ensure_local_key(settings.resolved_key_file)
    row = KeyVersion(version=1, provider=ProviderName.LOCAL, kcv=ekey.kcv, active=True)
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:  # another process initialised at the same moment
        found = _active_row(session)
        assert found is not None
        return found
    return row


def active_version(session: Session, settings: Settings) -> VersionInfo:
    return VersionInfo.of(init_keys(session, settings))


def _active_row(session: Session) -> KeyVersion | None:
    return session.scalar(select(KeyVersion).where(KeyVersion.active.is_(True)))


def _version(session: Session, version: int) -> VersionInfo:
    row = session.get(KeyVersion, version)
    if row is None:
        raise NotFound(f"key version {version} does not exist")
    return VersionInfo.of(row)


# --- data keys -------------------------------------------------------------------------------


def get_user_dek(session: Session, keyring: Keyring, user_id: int) -> bytes:
    """The user's DEK (32 bytes), created and wrapped on first use; unwrapped at most once per
    cache lifetime. Raises ``KeyProviderNotConnected`` fast when the provider is away."""
    row = session.get(WrappedKey, user_id)
    if row is None:
        return _create_dek(session, keyring, user_id)
    cached = keyring.cache.get(user_id, row.wrapped)
    if cached is not None:
        return cached
    dek = keyring.unwrap(_version(session, row.key_version), row.wrapped, user_context(user_id))
    keyring.cache.put(user_id, row.wrapped, dek)
    return dek


def _create_dek(session: Session, keyring: Keyring, user_id: int) -> bytes:
    if session.get(User, user_id) is None:
        raise NotFound(f"user {user_id} does not exist", code="user_not_found")
    info = active_version(session, keyring.settings)
    dek = os.urandom(DEK_BYTES)
    wrapped = keyring.wrap(info, dek, user_context(user_id))
    row = WrappedKey(
        user_id=user_id,
        key_version=info.version,
        provider=info.provider,
        wrapped=wrapped,
        created_at=utcnow(),
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:  # created concurrently: the stored one wins
        session.expunge(row)
        return get_user_dek(session, keyring, user_id)
    keyring.cache.put(user_id, wrapped, dek)
    return dek


@dataclass(frozen=True)
class UserKeyCheck:
    user_id: int
    key_version: int
    provider: ProviderName
    created_at: datetime
    rotated_at: datetime | None


def verify_user_key(session: Session, keyring: Keyring, user_id: int) -> UserKeyCheck:
    """Prove the user's DEK unwraps (creating it if needed) without revealing it."""
    get_user_dek(session, keyring, user_id)
    row = session.get(WrappedKey, user_id)
    assert row is not None
    return UserKeyCheck(user_id, row.key_version, row.provider, row.created_at, row.rotated_at)


# --- rotation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RotationReport:
    from_version: int | None
    to_version: int
    provider: ProviderName
    rewrapped: int


def rotate_keys(
    factory: sessionmaker[Session],
    keyring: Keyring,
    actor: Actor,
    *,
    provider: ProviderName | None = None,
    kms_key_arn: str | None = None,
    batch_size: int = 500,
) -> RotationReport:
    """Make a new key version active (optionally with another provider) and rewrap every DEK.

    Data is never re-encrypted: only wrapped DEKs change. Safe to interrupt: run
    ``rewrap_pending`` (or rotate again) to finish.
    """
    with transaction(factory) as session:
        old = _active_row(session) or init_keys(session, keyring.settings)
        target = provider or old.provider
        kcv, key_ref = _new_key_material(keyring, old, target, kms_key_arn)
        new = KeyVersion(
            version=old.version + 1,
            provider=target,
            kcv=kcv,
            key_ref=key_ref,
            active=True,
            created_at=utcnow(),
            created_by=actor.name,
        )
        old.active = False
        session.flush()
        session.add(new)
        record(
            session,
            actor,
            "keys.rotate",
            "key_version",
            new.version,
            before={"version": old.version, "provider": str(old.provider)},
            after={"version": new.version, "provider": str(target)},
        )
        from_version = old.version
    keyring.forget()
    log.info(
        "key rotation started", extra={"from_version": from_version, "to_version": from_version + 1}
    )
    rewrapped = rewrap_pending(factory, keyring, batch_size=batch_size)
    return RotationReport(from_version, from_version + 1, target, rewrapped)


def _new_key_material(
    keyring: Keyring, old: KeyVersion, target: ProviderName, kms_key_arn: str | None
) -> tuple[str, str]:
    if target is ProviderName.LOCAL:
        return add_key(keyring.settings.resolved_key_file).kcv, ""
    if target is ProviderName.AWSKMS:
        arn = kms_key_arn or (old.key_ref if old.provider is ProviderName.AWSKMS else "")
        if not arn:
            raise InvalidInput(
                "rotating to AWS KMS needs the key ARN (kms_key_arn)", field="kms_key_arn"
            )
        return "", describe_key(arn)
    links = keyring.hub.links()
    if not links:
        raise KeyProviderNotConnected(
            "rotating to the key connector needs a connected connector; connectors connect "
            "to 'fleetkeep serve', so rotate there (POST /api/v1/keys/rotate)"
        )
    offered = {link.current_kcv for link in links}
    if len(offered) > 1:
        raise RotationRefused(
            f"the connected connectors offer different current keys ({', '.join(offered)}); "
            "give every connector instance the same key file"
        )
    kcv = offered.pop()
    if old.provider is ProviderName.CONNECTOR and kcv == old.kcv:
        raise RotationRefused(
            "the connectors offer no new key: run 'fleetkeep key-connector new-key --key-file "
            "K' on the customer side, copy the file to every connector instance, restart them"
        )
    return kcv, ""


def rewrap_pending(factory: sessionmaker[Session], keyring: Keyring, batch_size: int = 500) -> int:
    """Rewrap, batch by batch, every DEK not wrapped by the active version; returns the count."""
    done = 0
    while True:
        with transaction(factory) as session:
            found = _active_row(session)
            if found is None:
                return done
            active = VersionInfo.of(found)
            rows = list(
                session.scalars(
                    select(WrappedKey)
                    .where(WrappedKey.key_version != active.version)
                    .order_by(WrappedKey.user_id)
                    .limit(batch_size)
                    .with_for_update(skip_locked=True)
                )
            )
            if not rows:
                return done
            versions: dict[int, VersionInfo] = {}
            for row in rows:
                if row.key_version not in versions:
                    versions[row.key_version] = _version(session, row.key_version)
                context = user_context(row.user_id)
                dek = keyring.unwrap(versions[row.key_version], row.wrapped, context)
                row.wrapped = keyring.wrap(active, dek, context)
                row.key_version, row.provider = active.version, active.provider
                row.rotated_at = utcnow()
            done += len(rows)
        log.info("rewrapped keys", extra={"count": done, "key_version": active.version})


def rotation_due(session: Session, settings: Settings) -> bool:
    if settings.key_rotation_days <= 0:
        return False
    active = _active_row(session)
    if active is None:
        return False
    return active.created_at <= utcnow() - timedelta(days=settings.key_rotation_days)


def scheduled_rotation(factory: sessionmaker[Session], keyring: Keyring) -> None:
    """The periodic job: finish interrupted rewraps, rotate when the interval has passed.

    A connector key can only be replaced on the customer side; when one is due and the
    connectors offer no new key, a warning alert says so instead.
    """
    rewrap_pending(factory, keyring)
    with transaction(factory) as session:
        due = rotation_due(session, keyring.settings)
    if not due:
        return
    try:
        rotate_keys(factory, keyring, Actor("system:key-rotation"))
    except RotationRefused as exc:
        with transaction(factory) as session:
            raise_alert(
                session,
                "key_rotation_due",
                "key-provider",
                Severity.WARNING,
                "Organization key rotation due",
                {"reason": exc.detail},
            )
        return
    with transaction(factory) as session:
        resolve_alert(session, "key_rotation_due", "key-provider")


# --- status ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectorView:
    host: str
    version: str
    replica: str
    remote_addr: str
    connected_at: datetime
    last_seen_at: datetime
    holds_active_key: bool


@dataclass(frozen=True)
class KeyStatus:
    provider: ProviderName
    key_version: int
    kcv: str
    key_ref: str
    connected: bool
    detail: str
    last_rotation_at: datetime
    wrapped_by_version: dict[int, int]
    pending_rewrap: int
    connectors: list[ConnectorView]
    rotation_days: int


def key_status(session: Session, keyring: Keyring) -> KeyStatus:
    """What ``keys status`` shows; works in any process (connectors are read from the database)."""
    row = _active_row(session)
    if row is None:
        raise NotFound("no organization key yet: run 'fleetkeep init'", code="no_key_version")
    active = VersionInfo.of(row)
    counts = dict(
        session.execute(
            select(WrappedKey.key_version, func.count()).group_by(WrappedKey.key_version)
        ).all()
    )
    connectors = live_connectors(session, active.kcv)
    if active.provider is ProviderName.CONNECTOR:
        holders = [c for c in connectors if c.holds_active_key]
        connected = bool(holders)
        detail = (
            f"{len(holders)} connector(s) connected" if holders else "Key connector not connected"
        )
    else:
        state = keyring.provider(active).status()
        connected, detail = state.connected, state.detail
    return KeyStatus(
        provider=active.provider,
        key_version=active.version,
        kcv=active.kcv,
        key_ref=active.key_ref,
        connected=connected,
        detail=detail,
        last_rotation_at=row.created_at,
        wrapped_by_version={int(k): int(v) for k, v in counts.items()},
        pending_rewrap=sum(v for k, v in counts.items() if k != active.version),
        connectors=connectors,
        rotation_days=keyring.settings.key_rotation_days,
    )


def live_connectors(session: Session, active_kcv: str) -> list[ConnectorView]:
    rows = session.scalars(
        select(ConnectorSession)
        .where(
            ConnectorSession.disconnected_at.is_(None),
            ConnectorSession.last_seen_at >= utcnow() - CONNECTOR_STALE,
        )
        .order_by(ConnectorSession.id)
    )
    return [
        ConnectorView(
            r.host,
            r.version,
            r.replica,
            r.remote_addr,
            r.connected_at,
            r.last_seen_at,
            active_kcv in r.kcvs.split(","),
        )
        for r in rows
    ]


# --- connectors ------------------------------------------------------------------------------


def create_connector_token(
    session: Session, actor: Actor, label: str
) -> tuple[str, ConnectorToken]:
    """Returns (the secret, shown once; the stored row)."""
    plain, digest = new_token("fkc")
    row = ConnectorToken(
        label=label.strip()[:200],
        prefix=display_prefix(plain),
        token_hash=digest,
        created_at=utcnow(),
        created_by=actor.name,
    )
    session.add(row)
    session.flush()
    record(
        session,
        actor,
        "keys.connector_token.create",
        "connector_token",
        row.id,
        after={"label": row.label, "prefix": row.prefix},
    )
    return plain, row


def list_connector_tokens(session: Session) -> list[ConnectorToken]:
    return list(session.scalars(select(ConnectorToken).order_by(ConnectorToken.id)))


def revoke_connector_token(session: Session, actor: Actor, token_id: int) -> ConnectorToken:
    row = session.get(ConnectorToken, token_id)
    if row is None:
        raise NotFound(f"connector token {token_id} does not exist")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        record(session, actor, "keys.connector_token.revoke", "connector_token", row.id)
    return row


def authenticate_connector(session: Session, plain: str | None) -> ConnectorToken:
    row = None
    if plain:
        row = session.scalar(
            select(ConnectorToken).where(ConnectorToken.token_hash == hash_token(plain))
        )
    if row is None or row.revoked_at is not None:
        raise ConnectorTokenInvalid(
            "the connector token is unknown or revoked; create one with "
            "'fleetkeep keys connector-token create'"
        )
    row.last_used_at = utcnow()
    return row


@dataclass(frozen=True)
class Hello:
    host: str
    version: str
    kcvs: frozenset[str]
    current_kcv: str

    @classmethod
    def parse(cls, message: Any) -> Hello:
        if not isinstance(message, dict) or message.get("type") != "hello":
            raise InvalidInput("the first message must be a hello")
        kcvs = message.get("kcvs")
        current = message.get("current_kcv")
        if (
            not isinstance(kcvs, list)
            or not kcvs
            or not all(isinstance(k, str) for k in kcvs)
            or current not in kcvs
        ):
            raise InvalidInput("hello needs kcvs (a list of key check values) and current_kcv")
        return cls(
            str(message.get("host", ""))[:255],
            str(message.get("version", ""))[:40],
            frozenset(kcvs),
            str(current),
        )


def admit_connector(
    session: Session, plain_token: str | None, hello: Hello, remote_addr: str
) -> int:
    """Check the connector's token and key; record its session and return the session id.

    A connector whose keys do not include the active connector key holds a different
    organization key and is refused with ``KeyCheckMismatch``.
    """
    token = authenticate_connector(session, plain_token)
    active = _active_row(session)
    needed = active is not None and active.provider is ProviderName.CONNECTOR
    if needed and active is not None and active.kcv not in hello.kcvs:
        raise KeyCheckMismatch(
            f"this connector's key file holds key check value(s) "
            f"{', '.join(sorted(hello.kcvs))}, but the active key version {active.version} "
            f"has check value {active.kcv}: it holds a different organization key"
        )
    row = ConnectorSession(
        token_id=token.id,
        host=hello.host,
        version=hello.version,
        remote_addr=remote_addr[:64],
        replica=REPLICA,
        kcvs=",".join(sorted(hello.kcvs))[:2000],
        connected_at=utcnow(),
        last_seen_at=utcnow(),
    )
    session.add(row)
    session.flush()
    resolve_provider_alert(session)
    return row.id


def touch_connector(session: Session, session_id: int) -> bool:
    """Refresh the session's ``last_seen_at``; False once its token has been revoked."""
    row = session.get(ConnectorSession, session_id)
    if row is None:
        return False
    row.last_seen_at = utcnow()
    token = session.get(ConnectorToken, row.token_id)
    return token is not None and token.revoked_at is None


def connector_gone(session: Session, session_id: int, remaining: list[LinkInfo]) -> None:
    """Mark the session closed; when no connector is left and one is needed, raise the alert."""
    session.execute(
        update(ConnectorSession)
        .where(ConnectorSession.id == session_id)
        .values(last_seen_at=utcnow(), disconnected_at=utcnow())
    )
    active = _active_row(session)
    if active is None or active.provider is not ProviderName.CONNECTOR:
        return
    if not any(active.kcv in link.kcvs for link in remaining):
        raise_provider_alert(
            session, ProviderName.CONNECTOR, "the last key connector disconnected from this server"
        )
