"""The envelope: DEKs created once, wrapped at rest, tamper-evident, rotated without rewrites."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import Column, Integer, LargeBinary, MetaData, Table, select, update
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.alerts.models import Alert, AlertStatus
from fleetkeep.audit.models import AuditEvent
from fleetkeep.audit.service import SYSTEM
from fleetkeep.backup.crypto import BlobType, Crypto
from fleetkeep.db import utcnow
from fleetkeep.keys.errors import (
    KeyCheckMismatch,
    KeyFileInvalid,
    KeyProviderNotConnected,
    WrappedKeyInvalid,
)
from fleetkeep.keys.hub import ConnectorLink
from fleetkeep.keys.keyfile import ensure_local_key, load_keys
from fleetkeep.keys.models import KeyVersion, ProviderName, WrappedKey
from fleetkeep.keys.service import (
    ALERT_TYPE,
    Keyring,
    get_user_dek,
    rewrap_pending,
    rotate_keys,
    scheduled_rotation,
    user_context,
)
from fleetkeep.keys.subkeys import derive_subkeys
from fleetkeep.settings import Settings
from tests.keys.scanning import database_bytes, find_secrets


def _wrapped(session: Session, user_id: int) -> WrappedKey:
    row = session.get(WrappedKey, user_id, populate_existing=True)
    assert row is not None
    return row


def test_a_dek_is_created_once_stored_wrapped_and_unwrapped_after_the_cache(
    session: Session, keyring: Keyring, users: list[int]
) -> None:
    dek = get_user_dek(session, keyring, users[0])
    session.commit()
    assert len(dek) == 32
    assert get_user_dek(session, keyring, users[0]) == dek
    assert keyring.unwraps == 0
    keyring.cache.clear()
    assert get_user_dek(session, keyring, users[0]) == dek
    assert keyring.unwraps == 1
    row = _wrapped(session, users[0])
    assert dek not in row.wrapped
    assert (row.key_version, row.provider) == (1, ProviderName.LOCAL)
    assert get_user_dek(session, keyring, users[1]) != dek


def test_a_missing_user_gets_no_key(session: Session, keyring: Keyring) -> None:
    with pytest.raises(Exception, match="user 999999 does not exist"):
        get_user_dek(session, keyring, 999_999)
    assert session.scalar(select(WrappedKey)) is None


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda w: w[:-1] + bytes([w[-1] ^ 1]), "authentication failed"),
        (lambda w: w[:30], "got 30"),
        (lambda w: b"", "got 0"),
        (lambda w: bytes([9]) + w[1:], "unknown wrapped key format 9"),
    ],
)
def test_an_altered_wrapped_key_fails_authentication_never_gives_wrong_data(
    session: Session,
    keyring: Keyring,
    users: list[int],
    tamper: Callable[[bytes], bytes],
    message: str,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    dek = get_user_dek(session, keyring, users[0])
    session.commit()
    row = _wrapped(session, users[0])
    altered = tamper(row.wrapped)
    session.execute(
        update(WrappedKey).where(WrappedKey.user_id == users[0]).values(wrapped=altered)
    )
    session.commit()
    keyring.cache.clear()
    with pytest.raises(WrappedKeyInvalid, match=message) as refused:
        get_user_dek(session, keyring, users[0])
    ekeys = {k.kcv: k.key for k in load_keys(settings.resolved_key_file)}
    said = (caplog.text + str(refused.value)).encode()
    assert find_secrets(said, {"dek": dek, **ekeys}) == []


def test_a_wrapped_key_copied_to_another_user_does_not_unwrap(
    session: Session, keyring: Keyring, users: list[int]
) -> None:
    get_user_dek(session, keyring, users[0])
    get_user_dek(session, keyring, users[1])
    session.commit()
    stolen = _wrapped(session, users[0]).wrapped
    session.execute(update(WrappedKey).where(WrappedKey.user_id == users[1]).values(wrapped=stolen))
    session.commit()
    keyring.cache.clear()
    with pytest.raises(WrappedKeyInvalid, match=f"{user_context(users[1])}"):
        get_user_dek(session, keyring, users[1])


def test_a_different_local_key_file_is_detected_by_its_check_value(
    session: Session, keyring: Keyring, settings: Settings, users: list[int]
) -> None:
    get_user_dek(session, keyring, users[0])
    session.commit()
    key_file = settings.resolved_key_file
    key_file.unlink()
    fresh = Keyring(settings, keyring.factory, keyring.hub)
    ensure_local_key(key_file)
    with pytest.raises(KeyCheckMismatch, match="different organization key file"):
        get_user_dek(session, fresh, users[0])


def test_a_missing_local_key_file_raises_the_alert_until_it_is_restored(
    session: Session, keyring: Keyring, settings: Settings, users: list[int]
) -> None:
    dek = get_user_dek(session, keyring, users[0])
    session.commit()
    key_file = settings.resolved_key_file
    saved = key_file.read_bytes()
    key_file.unlink()
    restarted = Keyring(settings, keyring.factory, keyring.hub)  # the server restarts
    with pytest.raises(KeyFileInvalid, match="does not exist"):
        get_user_dek(session, restarted, users[0])
    session.rollback()
    [alert] = session.scalars(select(Alert).where(Alert.type == ALERT_TYPE))
    assert (alert.status, alert.message) == (AlertStatus.OPEN, "Local key file unusable")
    assert "does not exist" in alert.details["reason"]
    key_file.write_bytes(saved)
    key_file.chmod(0o600)
    restarted.forget()
    assert get_user_dek(session, restarted, users[0]) == dek
    session.commit()
    session.refresh(alert)
    assert alert.status is AlertStatus.RESOLVED


def test_rotation_rewraps_every_dek_in_batches_without_changing_it(
    session: Session,
    keyring: Keyring,
    factory: sessionmaker[Session],
    settings: Settings,
    users: list[int],
) -> None:
    before = {u: get_user_dek(session, keyring, u) for u in users}
    session.commit()
    old_wrapped = {u: _wrapped(session, u).wrapped for u in users}
    report = rotate_keys(factory, keyring, SYSTEM, batch_size=2)
    assert (report.from_version, report.to_version, report.rewrapped) == (1, 2, len(users))
    assert len(keyring.cache) == 0
    assert len(load_keys(settings.resolved_key_file)) == 2
    session.expire_all()
    for u in users:
        row = _wrapped(session, u)
        assert row.key_version == 2
        assert row.rotated_at is not None
        assert row.wrapped != old_wrapped[u]
        assert get_user_dek(session, keyring, u) == before[u]
    assert session.scalar(select(AuditEvent).where(AuditEvent.action == "keys.rotate"))


class FailingAfter(Keyring):
    """A keyring whose provider dies after ``budget`` wraps: an interrupted rotation."""

    budget = 3

    def wrap(self, info, dek, context):  # type: ignore[no-untyped-def]
        if info.version == 2:
            if self.budget == 0:
                raise KeyProviderNotConnected("simulated outage")
            self.budget -= 1
        return super().wrap(info, dek, context)


def test_an_interrupted_rotation_resumes_where_it_stopped(
    session: Session,
    keyring: Keyring,
    factory: sessionmaker[Session],
    settings: Settings,
    users: list[int],
) -> None:
    before = {u: get_user_dek(session, keyring, u) for u in users}
    session.commit()
    flaky = FailingAfter(settings, factory, keyring.hub)
    with pytest.raises(KeyProviderNotConnected):
        rotate_keys(factory, flaky, SYSTEM, batch_size=1)
    session.expire_all()
    versions = sorted(_wrapped(session, u).key_version for u in users)
    assert versions == [1, 1, 2, 2, 2]
    assert rewrap_pending(factory, keyring, batch_size=2) == 2
    session.expire_all()
    keyring.cache.clear()
    assert {u: get_user_dek(session, keyring, u) for u in users} == before
    assert {_wrapped(session, u).key_version for u in users} == {2}


def test_an_unreachable_provider_fails_fast_with_one_alert_resolved_on_recovery(
    session: Session, keyring: Keyring, factory: sessionmaker[Session], users: list[int]
) -> None:
    get_user_dek(session, keyring, users[0])
    session.commit()
    # Switch to a connector that never connected: no hub links in this process.
    session.execute(update(KeyVersion).values(active=False))
    session.add(KeyVersion(version=2, provider=ProviderName.CONNECTOR, kcv="ab" * 8, active=True))
    session.commit()
    for user in users[1:4]:
        with pytest.raises(KeyProviderNotConnected, match="no key connector is connected"):
            get_user_dek(session, keyring, user)
    session.rollback()
    alerts = list(session.scalars(select(Alert).where(Alert.type == ALERT_TYPE)))
    assert len(alerts) == 1
    assert alerts[0].status is AlertStatus.OPEN
    assert alerts[0].message == "Key connector not connected"
    # Back on the local key (the provider "comes back"): the first success resolves it.
    session.execute(update(KeyVersion).values(active=False))
    session.execute(update(KeyVersion).where(KeyVersion.version == 1).values(active=True))
    session.commit()
    get_user_dek(session, keyring, users[1])
    session.commit()
    session.expire_all()
    assert session.get(Alert, alerts[0].id).status is AlertStatus.RESOLVED  # type: ignore[union-attr]


canaries = MetaData()
sealed_blobs = Table(
    "test_sealed_blobs",
    canaries,
    Column("id", Integer, primary_key=True),
    Column("sealed", LargeBinary),
)


def test_the_database_holds_no_ekey_no_dek_and_no_plaintext(
    session: Session,
    keyring: Keyring,
    factory: sessionmaker[Session],
    settings: Settings,
    users: list[int],
    database_url: str,
) -> None:
    plaintext = b"the quarterly numbers nobody may read: " + os.urandom(16).hex().encode()
    deks = {}
    engine = session.get_bind()
    canaries.create_all(engine)
    try:
        for user in users:
            deks[f"dek of user {user}"] = get_user_dek(session, keyring, user)
            crypto = Crypto(derive_subkeys(deks[f"dek of user {user}"]))
            blob_id = crypto.blob_id(plaintext)
            session.execute(
                sealed_blobs.insert().values(
                    id=user, sealed=crypto.seal_blob(BlobType.DATA, blob_id, plaintext)
                )
            )
        session.commit()
        rotate_keys(factory, keyring, SYSTEM)
        ekeys = {f"ekey {k.kcv}": k.key for k in load_keys(settings.resolved_key_file)}
        secrets = {**ekeys, **deks, "plaintext": plaintext}
        assert find_secrets(database_bytes(database_url), secrets) == []
        # The scan can fail: the same plaintext stored in clear is found.
        session.execute(sealed_blobs.insert().values(id=0, sealed=plaintext))
        session.commit()
        hits = find_secrets(database_bytes(database_url), secrets)
        assert hits
        assert all(hit.startswith("plaintext (") for hit in hits)
    finally:
        session.rollback()
        canaries.drop_all(engine)


def test_the_scanner_finds_secrets_in_any_encoding() -> None:
    secret = os.urandom(32)
    for wrapper in (
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        base64.b64encode(b"x" + secret + b"y"),
        base64.b64encode(b"xy" + secret),
        base64.urlsafe_b64encode(secret),
    ):
        assert find_secrets(b"prefix " + wrapper + b" suffix", {"s": secret}), wrapper
    assert find_secrets(os.urandom(4096), {"s": secret}) == []


def test_the_scheduled_job_rotates_once_the_interval_has_passed(
    session: Session, keyring: Keyring, factory: sessionmaker[Session], users: list[int]
) -> None:
    dek = get_user_dek(session, keyring, users[0])
    session.commit()
    scheduled_rotation(factory, keyring)
    assert session.scalar(select(KeyVersion.version).where(KeyVersion.active.is_(True))) == 1
    session.execute(update(KeyVersion).values(created_at=utcnow() - timedelta(days=91)))
    session.commit()
    scheduled_rotation(factory, keyring)
    session.expire_all()
    assert session.scalar(select(KeyVersion.version).where(KeyVersion.active.is_(True))) == 2
    assert _wrapped(session, users[0]).key_version == 2
    assert get_user_dek(session, keyring, users[0]) == dek


def test_a_due_connector_rotation_without_a_new_connector_key_raises_a_warning(
    session: Session, keyring: Keyring, factory: sessionmaker[Session]
) -> None:
    kcv = "ab" * 8
    session.add(
        KeyVersion(
            version=1,
            provider=ProviderName.CONNECTOR,
            kcv=kcv,
            active=True,
            created_at=utcnow() - timedelta(days=91),
        )
    )
    session.commit()

    async def connect() -> None:  # a connector whose newest key is the active one
        async def send(message: dict[str, object]) -> None:
            return None

        keyring.hub.attach(ConnectorLink(1, "dc-1", "t", frozenset({kcv}), kcv, utcnow(), send))

    asyncio.run(connect())
    scheduled_rotation(factory, keyring)
    alert = session.scalar(select(Alert).where(Alert.type == "key_rotation_due"))
    assert alert is not None
    assert alert.severity == "warning"
    assert "fleetkeep key-connector new-key" in alert.details["reason"]
    assert session.scalar(select(KeyVersion.version).where(KeyVersion.active.is_(True))) == 1
