"""The snapshot catalogue and backup sessions, as admins and agents list them."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from fleetkeep.vault.models import BackupSession, SessionState, SnapshotRecord


def list_snapshots(
    session: Session,
    *,
    user_id: int | None = None,
    device_id: int | None = None,
    after_id: int | None = None,
    limit: int = 100,
) -> list[SnapshotRecord]:
    """Newest first (by id, which follows commit order)."""
    query = select(SnapshotRecord).order_by(SnapshotRecord.id.desc()).limit(limit)
    if user_id is not None:
        query = query.where(SnapshotRecord.user_id == user_id)
    if device_id is not None:
        query = query.where(SnapshotRecord.device_id == device_id)
    if after_id is not None:
        query = query.where(SnapshotRecord.id < after_id)
    return list(session.scalars(query))


def list_sessions(
    session: Session,
    *,
    user_id: int | None = None,
    device_id: int | None = None,
    state: SessionState | None = None,
    after_id: int | None = None,
    limit: int = 100,
) -> list[BackupSession]:
    """Newest first."""
    query = select(BackupSession).order_by(BackupSession.id.desc()).limit(limit)
    if user_id is not None:
        query = query.where(BackupSession.user_id == user_id)
    if device_id is not None:
        query = query.where(BackupSession.device_id == device_id)
    if state is not None:
        query = query.where(BackupSession.state == state)
    if after_id is not None:
        query = query.where(BackupSession.id < after_id)
    return list(session.scalars(query))


def drop_snapshots(session: Session, user_id: int, snapshot_ids: Iterable[str]) -> int:
    """Remove catalogue entries of snapshots deleted from the repository (retention)."""
    ids = list(snapshot_ids)
    if not ids:
        return 0
    done = session.execute(
        delete(SnapshotRecord).where(
            SnapshotRecord.user_id == user_id, SnapshotRecord.snapshot_id.in_(ids)
        )
    )
    return int(done.rowcount)  # type: ignore[attr-defined]
