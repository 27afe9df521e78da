"""The AWS KMS provider against moto in server mode on a loopback port."""

from __future__ import annotations

import logging

import boto3
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.alerts.models import Alert, AlertStatus
from fleetkeep.audit.service import SYSTEM
from fleetkeep.keys.errors import KeyAccessDenied, KeyProviderNotConnected, WrappedKeyInvalid
from fleetkeep.keys.models import KeyVersion, ProviderName, WrappedKey
from fleetkeep.keys.service import ALERT_TYPE, Keyring, get_user_dek, key_status, rotate_keys
from fleetkeep.settings import Settings
from tests.keys.scanning import find_secrets
from tests.support.servers import free_port


@pytest.fixture
def kms(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return boto3.client("kms", region_name="eu-west-1")


def _new_key(kms: object) -> str:
    arn: str = kms.create_key(Description="fleetkeep test")["KeyMetadata"]["Arn"]  # type: ignore[attr-defined]
    return arn


def test_switching_to_kms_rewraps_every_dek_and_keeps_it(
    kms: object,
    session: Session,
    keyring: Keyring,
    factory: sessionmaker[Session],
    users: list[int],
) -> None:
    arn = _new_key(kms)
    before = {u: get_user_dek(session, keyring, u) for u in users}
    session.commit()
    report = rotate_keys(factory, keyring, SYSTEM, provider=ProviderName.AWSKMS, kms_key_arn=arn)
    assert (report.to_version, report.provider, report.rewrapped) == (2, "awskms", len(users))
    session.expire_all()
    for u in users:
        row = session.get(WrappedKey, u)
        assert row is not None
        assert row.provider is ProviderName.AWSKMS
        assert find_secrets(row.wrapped, {"dek": before[u]}) == []
        assert get_user_dek(session, keyring, u) == before[u]
    status = key_status(session, keyring)
    assert (status.provider, status.key_ref, status.connected) == ("awskms", arn, True)
    # A new user's key is made by KMS directly.
    assert len(get_user_dek(session, keyring, users[-1])) == 32


def test_a_tampered_kms_wrapped_key_fails_authentication(
    kms: object,
    session: Session,
    keyring: Keyring,
    factory: sessionmaker[Session],
    users: list[int],
) -> None:
    rotate_keys(factory, keyring, SYSTEM, provider=ProviderName.AWSKMS, kms_key_arn=_new_key(kms))
    get_user_dek(session, keyring, users[0])
    session.commit()
    row = session.get(WrappedKey, users[0])
    assert row is not None
    wrapped = row.wrapped
    for altered in (wrapped[:-1] + bytes([wrapped[-1] ^ 1]), wrapped[: len(wrapped) // 2]):
        session.execute(
            update(WrappedKey).where(WrappedKey.user_id == users[0]).values(wrapped=altered)
        )
        session.commit()
        keyring.cache.clear()
        with pytest.raises(WrappedKeyInvalid):
            get_user_dek(session, keyring, users[0])


def test_kms_access_denied_is_a_clear_error_an_alert_and_no_key_in_the_log(
    kms: object,
    session: Session,
    keyring: Keyring,
    factory: sessionmaker[Session],
    users: list[int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    arn = _new_key(kms)
    rotate_keys(factory, keyring, SYSTEM, provider=ProviderName.AWSKMS, kms_key_arn=arn)
    dek = get_user_dek(session, keyring, users[0])
    session.commit()
    # The version now names a key this account may not use for that ciphertext: KMS answers
    # AccessDeniedException (moto: "... or you are not allowed to access").
    session.execute(
        update(KeyVersion).where(KeyVersion.active.is_(True)).values(key_ref=_new_key(kms))
    )
    session.commit()
    keyring.forget()
    caplog.set_level(logging.DEBUG)
    for _ in range(2):
        with pytest.raises(KeyAccessDenied, match=r"AWS KMS refused key .*AccessDeniedException"):
            get_user_dek(session, keyring, users[0])
    session.rollback()
    alerts = list(session.scalars(select(Alert).where(Alert.type == ALERT_TYPE)))
    assert len(alerts) == 1
    assert alerts[0].status is AlertStatus.OPEN
    assert alerts[0].message == "AWS KMS unavailable"
    assert "AccessDeniedException" in alerts[0].details["reason"]
    assert find_secrets(caplog.text.encode(), {"dek": dek}) == []
    session.execute(update(KeyVersion).where(KeyVersion.active.is_(True)).values(key_ref=arn))
    session.commit()
    keyring.forget()
    assert get_user_dek(session, keyring, users[0]) == dek
    assert find_secrets(caplog.text.encode(), {"dek": dek}) == []
    session.expire_all()
    assert session.get(Alert, alerts[0].id).status is AlertStatus.RESOLVED  # type: ignore[union-attr]


def test_rotating_to_an_unknown_kms_key_changes_nothing(
    kms: object,
    session: Session,
    keyring: Keyring,
    factory: sessionmaker[Session],
    users: list[int],
) -> None:
    get_user_dek(session, keyring, users[0])
    session.commit()
    missing = "arn:aws:kms:eu-west-1:123456789012:key/00000000-0000-0000-0000-000000000000"
    with pytest.raises(KeyAccessDenied, match="NotFoundException"):
        rotate_keys(factory, keyring, SYSTEM, provider=ProviderName.AWSKMS, kms_key_arn=missing)
    assert key_status(session, keyring).key_version == 1


def test_unreachable_kms_fails_fast_as_not_connected(
    session: Session,
    keyring: Keyring,
    factory: sessionmaker[Session],
    users: list[int],
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    kms: object,
) -> None:
    rotate_keys(factory, keyring, SYSTEM, provider=ProviderName.AWSKMS, kms_key_arn=_new_key(kms))
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", f"http://127.0.0.1:{free_port()}")
    cut_off = Keyring(settings, factory, keyring.hub)
    with pytest.raises(KeyProviderNotConnected, match="AWS KMS unreachable"):
        get_user_dek(session, cut_off, users[0])
