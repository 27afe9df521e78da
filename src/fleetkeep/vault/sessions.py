"""Backup sessions: begin, upload objects, commit the snapshot, abort; quotas and usage.

The agent chunks, encrypts and packs (``fleetkeep.backup``) and hands the server finished
objects. The server checks each one against its name (every name but ``config`` is the
BLAKE3 of the bytes), counts it against the user's quota and writes it to the user's
repository. The snapshot object is the commit: it is written last, only after the server
has opened it with the user's key, and recorded in the catalogue in the same transaction
that closes the session. A session that never commits leaves packs and index files that
name no snapshot: the next backup adopts them (``adopt_unindexed_packs``), prune eventually
removes what nothing uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fleetkeep.alerts.models import Severity
from fleetkeep.alerts.service import raise_alert, resolve_alert
from fleetkeep.audit.service import Actor, record
from fleetkeep.backup import Snapshot
from fleetkeep.backup.crypto import Crypto, ObjectKind, content_name
from fleetkeep.backup.errors import IntegrityError as SealBroken
from fleetkeep.backup.repository import CONFIG
from fleetkeep.backup.stores import Store
from fleetkeep.backup.stores.base import InvalidName, check_name
from fleetkeep.backup.stores.s3 import S3Store
from fleetkeep.db import utcnow
from fleetkeep.deployment.models import Device
from fleetkeep.deployment.replacement import restore_plan_of
from fleetkeep.errors import NotFound
from fleetkeep.identity.models import StorageRegion, User
from fleetkeep.keys.service import Keyring, get_user_dek
from fleetkeep.keys.subkeys import derive_subkeys
from fleetkeep.units import format_bytes
from fleetkeep.vault.errors import ObjectRejected, ObjectTooLarge, QuotaExceeded, SessionClosed
from fleetkeep.vault.models import BackupSession, SessionState, SnapshotRecord, StorageUsage
from fleetkeep.vault.repositories import open_user_repository, store_for_region

log = logging.getLogger("fleetkeep.vault")

# A pack is ~16 MiB plus at most one chunk (8 MiB max) and its header; anything far bigger
# is not something our agent makes.
MAX_OBJECT_BYTES = 64 * 1024 * 1024
# Folders an agent may write during a session. ``snapshots/`` only through commit; ``config``
# (made by the server), ``pending/`` (prune) and ``keys/`` (escrow) never.
WRITABLE_FOLDERS = ("packs", "index")
READABLE_FOLDERS = ("packs", "index", "snapshots", "pending")
QUOTA_ALERT = "quota_exceeded"
# Agents report progress every few seconds and retry for minutes: a day of silence is death.
STALE_AFTER = timedelta(hours=24)


def quota_subject(user_id: int) -> str:
    return f"user:{user_id}"


def user_store(session: Session, user: User) -> Store:
    region = session.get(StorageRegion, user.storage_region_id)
    if region is None:
        raise NotFound(f"storage region {user.storage_region_id} does not exist")
    return store_for_region(region, user.id)


# --- usage and quota -------------------------------------------------------------------------


def stored_bytes(session: Session, user_id: int) -> int:
    row = session.get(StorageUsage, user_id)
    return row.stored_bytes if row is not None else 0


def add_stored_bytes(session: Session, user_id: int, delta: int) -> None:
    """Atomic in the database, so parallel uploads of one user never lose a count."""
    done = session.execute(
        update(StorageUsage)
        .where(StorageUsage.user_id == user_id)
        .values(stored_bytes=StorageUsage.stored_bytes + delta, updated_at=utcnow())
    )
    if done.rowcount:  # type: ignore[attr-defined]
        return
    try:
        with session.begin_nested():
            session.add(StorageUsage(user_id=user_id, stored_bytes=max(0, delta)))
    except IntegrityError:  # created concurrently
        add_stored_bytes(session, user_id, delta)


def recount_stored_bytes(session: Session, user: User) -> int:
    """Set the user's usage to what their repository really occupies (after prune, or to
    repair counts a crash left behind)."""
    total = sum(o.size for o in user_store(session, user).list(""))
    add_stored_bytes(session, user.id, 0)  # the row exists from here on
    session.execute(
        update(StorageUsage)
        .where(StorageUsage.user_id == user.id)
        .values(stored_bytes=total, updated_at=utcnow())
    )
    return total


def _check_quota(
    session: Session, user: User, adding: int, failing: BackupSession | None = None
) -> None:
    """Refuse (and alert) when the user is at or over quota, or ``adding`` would go over; the
    refused session ``failing`` is closed as failed."""
    quota = user.quota_bytes
    if quota <= 0:
        return
    used = stored_bytes(session, user.id)
    over = used >= quota if adding == 0 else used + adding > quota
    if not over:
        return
    usage = f"{format_bytes(used)} of {format_bytes(quota)}"
    raise_alert(
        session,
        QUOTA_ALERT,
        quota_subject(user.id),
        Severity.WARNING,
        f"{user.email} is out of backup storage: {usage} used",
        {"user_id": user.id, "email": user.email, "used_bytes": used, "quota_bytes": quota},
    )
    refusal = QuotaExceeded(
        f"{user.email} has used {usage} of their quota; the backup cannot continue",
        used_bytes=used,
        quota_bytes=quota,
    )
    if failing is not None:
        _fail(failing, refusal.code, refusal.detail)
    raise refusal


# --- sessions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Begun:
    session: BackupSession
    dek: bytes
    used_bytes: int
    quota_bytes: int
    direct_upload: bool


def begin_session(session: Session, keyring: Keyring, device: Device) -> Begun:
    """Open a backup session for ``device`` (authenticated, so it and its user are active).

    Refuses with ``quota_exceeded`` (and an alert) when the user is at or over quota, and with
    ``key_provider_not_connected`` when the user's key cannot be had; the agent retries later.
    Creates the user's repository on first use. Any older open session of the device is
    abandoned: one agent runs one backup at a time.
    """
    user = device.user
    _check_quota(session, user, 0)
    store = user_store(session, user)
    if not store.exists(CONFIG):
        open_user_repository(session, keyring, user, create=True)
    dek = get_user_dek(session, keyring, user.id)
    now = utcnow()
    session.execute(
        update(BackupSession)
        .where(BackupSession.device_id == device.id, BackupSession.state == SessionState.OPEN)
        .values(state=SessionState.ABANDONED, finished_at=now)
    )
    row = BackupSession(device_id=device.id, user_id=user.id, started_at=now, last_activity_at=now)
    session.add(row)
    session.flush()
    log.info("backup session begun", extra={"device_id": device.id, "session_id": row.id})
    return Begun(row, dek, stored_bytes(session, user.id), user.quota_bytes, direct_uploads(store))


def open_session(session: Session, device: Device, session_id: int) -> BackupSession:
    row = session.get(BackupSession, session_id)
    if row is None or row.device_id != device.id:
        raise NotFound(f"backup session {session_id} does not exist", code="no_backup_session")
    if row.state is not SessionState.OPEN:
        raise SessionClosed(f"backup session {session_id} is {row.state}", state=str(row.state))
    return row


def check_upload_name(name: str) -> str:
    try:
        check_name(name)
    except InvalidName as exc:
        raise ObjectRejected(str(exc)) from None
    folder, _, rest = name.partition("/")
    if folder not in WRITABLE_FOLDERS:
        raise ObjectRejected(f"{name}: agents may only upload packs and index files")
    if folder == "packs":
        prefix, _, pack_id = rest.partition("/")
        if pack_id[:2] != prefix:
            raise ObjectRejected(f"{name}: a pack lives under the first two digits of its id")
    return name


def _content_matches(name: str, digest: str) -> None:
    if name.rpartition("/")[2] != digest:
        raise ObjectRejected(f"{name}: content does not match its name (BLAKE3 {digest})")


def upload_object(
    session: Session, device: Device, session_id: int, name: str, data: bytes | bytearray
) -> bool:
    """Store one pack or index file of the session, once its BLAKE3 matches its name. Returns
    False when the object was already there (a retried upload, or a pack an interrupted
    session left): it is not counted twice."""
    row = open_session(session, device, session_id)
    check_upload_name(name)
    _content_matches(name, content_name(data))
    row.last_activity_at = utcnow()
    store = user_store(session, device.user)
    if store.exists(name):
        return False
    _check_quota(session, device.user, len(data), failing=row)
    store.put(name, data)
    add_stored_bytes(session, device.user.id, len(data))
    row.uploaded_objects += 1
    row.uploaded_bytes += len(data)
    return True


def direct_uploads(store: Store) -> bool:
    """Whether agents may put packs straight into the store (S3: pre-signed URLs)."""
    return isinstance(store, S3Store)


def direct_upload_url(
    session: Session, device: Device, session_id: int, name: str, size: int
) -> str | None:
    """A pre-signed URL for the agent to PUT one pack straight into S3, sparing the server the
    data; None when the pack is already there. The quota is checked here, the bytes counted
    at :func:`confirm_direct_upload`. The server cannot hash what it never sees: a wrong pack
    can only damage its own user's repository, and AEAD plus ``check --read-data`` catch it."""
    row = open_session(session, device, session_id)
    check_upload_name(name)
    if not name.startswith("packs/"):
        raise ObjectRejected(f"{name}: only packs are uploaded directly")
    if not 0 < size <= MAX_OBJECT_BYTES:
        raise ObjectTooLarge(f"objects are limited to {MAX_OBJECT_BYTES} bytes")
    store = user_store(session, device.user)
    if not isinstance(store, S3Store):
        raise ObjectRejected("direct uploads need an S3 store", code="direct_upload_unavailable")
    row.last_activity_at = utcnow()
    if store.exists(name):
        return None
    _check_quota(session, device.user, size, failing=row)
    return store.presigned_put(name)


def confirm_direct_upload(session: Session, device: Device, session_id: int, name: str) -> None:
    """Count a pack the agent put into S3 itself, with the size S3 reports."""
    row = open_session(session, device, session_id)
    check_upload_name(name)
    store = user_store(session, device.user)
    found = next((o for o in store.list(name) if o.name == name), None)
    if found is None:
        raise ObjectRejected(f"{name} is not in the store: upload it first")
    add_stored_bytes(session, device.user.id, found.size)
    row.uploaded_objects += 1
    row.uploaded_bytes += found.size
    row.last_activity_at = utcnow()


def commit_snapshot(
    session: Session, keyring: Keyring, device: Device, session_id: int, name: str, sealed: bytes
) -> SnapshotRecord:
    """Make the session's snapshot visible and catalogue it; the session is then closed.

    The snapshot must open with the user's key (a malformed one would break every later
    listing of the repository). Retrying a commit that reached the store but not the database
    (the server died in between) finds the object there and completes the catalogue entry.
    """
    user = device.user
    snapshot_id = name.removeprefix("snapshots/")
    done = session.scalar(
        select(SnapshotRecord).where(
            SnapshotRecord.user_id == user.id, SnapshotRecord.snapshot_id == snapshot_id
        )
    )
    if done is not None and done.session_id == session_id:
        return done  # a retried commit whose answer was lost
    row = open_session(session, device, session_id)
    try:
        check_name(name)
    except InvalidName as exc:
        raise ObjectRejected(str(exc)) from None
    if not name.startswith("snapshots/"):
        raise ObjectRejected(f"{name}: a commit carries a snapshot")
    _content_matches(name, content_name(sealed))
    crypto = Crypto(derive_subkeys(get_user_dek(session, keyring, user.id)))
    try:
        snap = Snapshot.from_json(
            snapshot_id, crypto.open_object(ObjectKind.SNAPSHOT, sealed, name)
        )
    except SealBroken as exc:
        raise ObjectRejected(f"{name}: not a snapshot of this user's repository ({exc})") from None
    store = user_store(session, user)
    if not store.exists(name):
        _check_quota(session, user, len(sealed), failing=row)
        store.put(name, sealed)
        add_stored_bytes(session, user.id, len(sealed))
    now = utcnow()
    record = SnapshotRecord(
        user_id=user.id,
        device_id=device.id,
        session_id=row.id,
        snapshot_id=snapshot_id,
        time=snap.time.astimezone(UTC),
        committed_at=now,
        hostname=snap.hostname[:255],
        paths=snap.paths,
        file_count=snap.stats.get("files", 0),
        dir_count=snap.stats.get("dirs", 0),
        size_bytes=snap.stats.get("bytes", 0),
        new_bytes=snap.stats.get("new_bytes", 0),
        stored_bytes=snap.stats.get("stored_bytes", 0),
        errors=snap.stats.get("errors", 0),
        duration_ms=snap.stats.get("duration_ms", 0),
    )
    session.add(record)
    row.state = SessionState.COMMITTED
    row.snapshot_id = snapshot_id
    row.progress = {**row.progress, **snap.stats}  # the final figures
    row.finished_at = row.last_activity_at = now
    device.last_backup_at = now
    if user.quota_bytes <= 0 or stored_bytes(session, user.id) < user.quota_bytes:
        resolve_alert(session, QUOTA_ALERT, quota_subject(user.id))
    session.flush()
    log.info(
        "snapshot committed",
        extra={"device_id": device.id, "session_id": row.id, "snapshot": snapshot_id},
    )
    return record


def abort_session(session: Session, device: Device, session_id: int, reason: str) -> BackupSession:
    """The agent gives up; what it uploaded stays for the next attempt to reuse."""
    row = open_session(session, device, session_id)
    row.state = SessionState.ABORTED
    row.error_detail = reason[:1000]
    row.finished_at = utcnow()
    return row


def report_progress(
    session: Session, device: Device, session_id: int, progress: dict[str, Any]
) -> BackupSession:
    row = open_session(session, device, session_id)
    row.progress = progress
    row.last_activity_at = utcnow()
    return row


def expire_stale_sessions(session: Session, idle: timedelta = STALE_AFTER) -> int:
    """Open sessions idle for ``idle`` (their agent died or vanished) become abandoned, so the
    admin's view does not show them running forever; returns how many."""
    now = utcnow()
    done = session.execute(
        update(BackupSession)
        .where(
            BackupSession.state == SessionState.OPEN,
            BackupSession.last_activity_at < now - idle,
        )
        .values(state=SessionState.ABANDONED, finished_at=now, error_code="stale")
    )
    return int(done.rowcount)  # type: ignore[attr-defined]


def _fail(row: BackupSession, code: str, detail: str) -> None:
    row.state = SessionState.FAILED
    row.error_code = code
    row.error_detail = detail[:1000]
    row.finished_at = utcnow()


# --- reading the repository (restore, listing, the agent's index) -----------------------------


def check_read_name(name: str) -> str:
    try:
        check_name(name)
    except InvalidName as exc:
        raise ObjectRejected(str(exc)) from None
    if name != CONFIG and name.partition("/")[0] not in READABLE_FOLDERS:
        raise ObjectRejected(f"{name}: not a repository object")
    return name


def repository_key(session: Session, keyring: Keyring, device: Device) -> tuple[bytes, bool]:
    """The user's DEK for the agent (restore, listing) and whether their repository exists."""
    user = device.user
    exists = user_store(session, user).exists(CONFIG)
    return get_user_dek(session, keyring, user.id), exists


# --- replacement restores ---------------------------------------------------------------------

RESTORE_OUTCOMES = ("done", "failed")


def record_restore_outcome(session: Session, device: Device, outcome: str, detail: str) -> None:
    """The new device reports how executing its replacement restore plan went."""
    if outcome not in RESTORE_OUTCOMES:
        raise ObjectRejected(f"outcome must be one of {', '.join(RESTORE_OUTCOMES)}")
    plan = restore_plan_of(session, device.id)
    plan.status = outcome
    record(
        session,
        Actor(f"device:{device.id}"),
        f"device.restore_plan_{outcome}",
        "device",
        device.id,
        after={"restore_plan": plan.id, "detail": detail[:1000]},
    )
