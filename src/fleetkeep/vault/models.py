"""Tables of the vault: backup sessions, the snapshot catalogue and each user's stored bytes.

The repository in the store is the truth (it restores without the database); these tables
are what the server needs to answer quickly: who backed up when, how much, and quotas.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fleetkeep.db import Base, str_enum, utcnow


class SessionState(enum.StrEnum):
    OPEN = "open"
    COMMITTED = "committed"
    ABORTED = "aborted"  # the agent gave up (error, stop) and said so
    FAILED = "failed"  # the server refused part of it (quota)
    ABANDONED = "abandoned"  # a newer session of the same device replaced it


class BackupSession(Base):
    """One backup run of one device, from begin to commit (or not)."""

    __tablename__ = "backup_sessions"
    __table_args__ = (Index("ix_backup_sessions_device_state", "device_id", "state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    state: Mapped[SessionState] = mapped_column(
        str_enum(SessionState, 12), default=SessionState.OPEN
    )
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_activity_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    uploaded_objects: Mapped[int] = mapped_column(default=0)
    uploaded_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error_code: Mapped[str] = mapped_column(String(64), default="")
    error_detail: Mapped[str] = mapped_column(String(1000), default="")
    snapshot_id: Mapped[str | None] = mapped_column(String(64), default=None)


class SnapshotRecord(Base):
    """A committed snapshot, as the catalogue knows it (the object itself is in the store)."""

    __tablename__ = "snapshots"
    __table_args__ = (
        UniqueConstraint("user_id", "snapshot_id"),
        Index("ix_snapshots_user_time", "user_id", "time"),
        Index("ix_snapshots_device_time", "device_id", "time"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    device_id: Mapped[int | None] = mapped_column(
        ForeignKey("devices.id", ondelete="SET NULL"), default=None
    )
    session_id: Mapped[int | None] = mapped_column(
        ForeignKey("backup_sessions.id", ondelete="SET NULL"), default=None
    )
    snapshot_id: Mapped[str] = mapped_column(String(64))
    time: Mapped[datetime]
    committed_at: Mapped[datetime] = mapped_column(default=utcnow)
    hostname: Mapped[str] = mapped_column(String(255), default="")
    paths: Mapped[list[str]] = mapped_column(JSON, default=list)
    file_count: Mapped[int] = mapped_column(BigInteger, default=0)
    dir_count: Mapped[int] = mapped_column(BigInteger, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    new_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(default=0)
    duration_ms: Mapped[int] = mapped_column(BigInteger, default=0)


class StorageUsage(Base):
    """Bytes a user's repository occupies in the store, counted as objects are written."""

    __tablename__ = "storage_usage"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
