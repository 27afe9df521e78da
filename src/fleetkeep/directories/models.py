"""Tables of directory provisioning: sources, their mappings, sync history, deployment cache."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleetkeep.db import Base, str_enum, utcnow
from fleetkeep.identity.models import QuotaUnit


class DirectoryKind(enum.StrEnum):
    AD = "ad"
    LDAP = "ldap"
    SCIM = "scim"
    ENTRA = "entra"
    GOOGLE = "google"
    CSV = "csv"


class MappingPurpose(enum.StrEnum):
    IMPORT = "import"
    DEPLOYMENT = "deployment"


class SyncStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    HELD = "held"
    CONFIRMED = "confirmed"
    SUPERSEDED = "superseded"
    DRY_RUN = "dry-run"


class Directory(Base):
    """One source of users. ``settings`` holds the kind-specific connection settings.

    ``secret`` is the sealed bind password / client secret (see ``credentials.seal``); it never
    leaves the server.
    """

    __tablename__ = "directories"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[DirectoryKind] = mapped_column(str_enum(DirectoryKind, 10))
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    secret: Mapped[str | None] = mapped_column(Text, default=None)
    enabled: Mapped[bool] = mapped_column(default=True)
    sync_interval_hours: Mapped[float] = mapped_column(default=24.0)
    auto_update: Mapped[bool] = mapped_column(default=True)
    auto_preserve: Mapped[bool] = mapped_column(default=True)
    # A plan preserving more than this many users, or this percentage of the users the
    # directory owns, is held for an admin's confirmation.
    hold_above_count: Mapped[int] = mapped_column(default=500)
    hold_above_percent: Mapped[float] = mapped_column(default=10.0)
    last_sync_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def source(self) -> str:
        """The ``users.source`` value of the users this directory owns."""
        return f"directory:{self.id}"


class Mapping(Base):
    """A rule choosing users of a directory, and what they get: first match by priority wins."""

    __tablename__ = "directory_mappings"
    __table_args__ = (Index("ix_directory_mappings_order", "directory_id", "purpose", "priority"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    directory_id: Mapped[int] = mapped_column(ForeignKey("directories.id", ondelete="CASCADE"))
    purpose: Mapped[MappingPurpose] = mapped_column(
        str_enum(MappingPurpose, 12), default=MappingPurpose.IMPORT
    )
    name: Mapped[str] = mapped_column(String(200), default="")
    rule: Mapped[dict[str, Any]] = mapped_column(JSON)
    profile_id: Mapped[int] = mapped_column(ForeignKey("profiles.id"))
    storage_region_id: Mapped[int] = mapped_column(ForeignKey("storage_regions.id"))
    # None: the profile's default quota.
    quota_value: Mapped[int | None] = mapped_column(BigInteger, default=None)
    quota_unit: Mapped[QuotaUnit | None] = mapped_column(str_enum(QuotaUnit, 4), default=None)
    auto_import: Mapped[bool] = mapped_column(default=True)
    priority: Mapped[int] = mapped_column(default=100)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SyncRun(Base):
    """One sync attempt, kept as history. A held run keeps its plan until confirmed."""

    __tablename__ = "directory_sync_runs"
    __table_args__ = (Index("ix_directory_sync_runs_directory", "directory_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    directory_id: Mapped[int] = mapped_column(ForeignKey("directories.id", ondelete="CASCADE"))
    status: Mapped[SyncStatus] = mapped_column(str_enum(SyncStatus, 12), default=SyncStatus.RUNNING)
    dry_run: Mapped[bool] = mapped_column(default=False)
    trigger: Mapped[str] = mapped_column(String(20), default="manual")
    actor: Mapped[str] = mapped_column(String(320), default="")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    duration_ms: Mapped[int] = mapped_column(default=0)
    seen: Mapped[int] = mapped_column(default=0)
    created: Mapped[int] = mapped_column(default=0)
    updated: Mapped[int] = mapped_column(default=0)
    preserved: Mapped[int] = mapped_column(default=0)
    reactivated: Mapped[int] = mapped_column(default=0)
    skipped: Mapped[int] = mapped_column(default=0)
    errors: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    held_reason: Mapped[str | None] = mapped_column(String(500), default=None)
    # What the plan did or would do: skipped users with reasons, warnings (capped).
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The plan awaiting confirmation (only while held).
    held_plan: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    confirmed_by: Mapped[str | None] = mapped_column(String(320), default=None)


class DeploymentCacheEntry(Base):
    """Who may activate a device through a deployment mapping, as of the last good sync.

    Activation looks users up here (by email, UPN or username + domain) instead of asking the
    directory while a device waits.
    """

    __tablename__ = "deployment_cache"
    __table_args__ = (
        Index("ix_deployment_cache_directory_external", "directory_id", "external_id", unique=True),
        Index("ix_deployment_cache_account", "sam_account_name", "domain"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    directory_id: Mapped[int] = mapped_column(ForeignKey("directories.id", ondelete="CASCADE"))
    mapping_id: Mapped[int] = mapped_column(
        ForeignKey("directory_mappings.id", ondelete="CASCADE"), index=True
    )
    external_id: Mapped[str] = mapped_column(String(256))
    dn: Mapped[str] = mapped_column(String(1024), default="")
    email: Mapped[str] = mapped_column(String(320), default="", index=True)
    upn: Mapped[str] = mapped_column(String(320), default="", index=True)
    sam_account_name: Mapped[str] = mapped_column(String(256), default="")
    domain: Mapped[str] = mapped_column(String(256), default="")
    netbios_domain: Mapped[str] = mapped_column(String(64), default="")
    display_name: Mapped[str] = mapped_column(String(256), default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
