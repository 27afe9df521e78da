from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from fleetkeep.db import Base, str_enum, utcnow


class UserState(enum.StrEnum):
    ACTIVE = "active"
    PRESERVED = "preserved"
    DELETED = "deleted"


class QuotaUnit(enum.StrEnum):
    MB = "MB"
    GB = "GB"
    TB = "TB"

    @property
    def bytes(self) -> int:
        return {"MB": 1024**2, "GB": 1024**3, "TB": 1024**4}[self.value]


class Profile(Base):
    """A backup policy and the rules for the devices of the users in it."""

    __tablename__ = "profiles"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(String(2000), default="")
    login_method: Mapped[str] = mapped_column(String(20), default="password")
    max_devices_per_user: Mapped[int] = mapped_column(default=3)
    backup_interval_minutes: Mapped[int] = mapped_column(default=240)
    policy: Mapped[dict[str, Any]] = mapped_column(default=dict)
    default_quota_value: Mapped[int] = mapped_column(BigInteger, default=0)
    default_quota_unit: Mapped[QuotaUnit] = mapped_column(
        str_enum(QuotaUnit, 4), default=QuotaUnit.GB
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class StorageRegion(Base):
    """Where a user's backup data lives: a store URL (file path or s3 bucket/prefix)."""

    __tablename__ = "storage_regions"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    region: Mapped[str] = mapped_column(String(100), default="")
    store_url: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        Index("ix_users_source_external_id", "source", "external_id"),
        Index("ix_users_state_id", "state", "id"),
        # Activation by UPN (IMD v5) matches case-insensitively.
        Index("ix_users_lower_upn", text("lower(upn)")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    email_normalized: Mapped[str] = mapped_column(String(320), unique=True)
    username: Mapped[str] = mapped_column(String(256), default="")
    display_name: Mapped[str] = mapped_column(String(256), default="")
    state: Mapped[UserState] = mapped_column(str_enum(UserState, 16), default=UserState.ACTIVE)
    preserved_by: Mapped[str | None] = mapped_column(String(40), default=None)
    state_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    profile_id: Mapped[int] = mapped_column(ForeignKey("profiles.id"), index=True)
    storage_region_id: Mapped[int] = mapped_column(ForeignKey("storage_regions.id"), index=True)
    quota_value: Mapped[int] = mapped_column(BigInteger, default=0)
    quota_unit: Mapped[QuotaUnit] = mapped_column(str_enum(QuotaUnit, 4), default=QuotaUnit.GB)
    source: Mapped[str] = mapped_column(String(64), default="manual")
    external_id: Mapped[str | None] = mapped_column(String(256), default=None)
    dn: Mapped[str | None] = mapped_column(String(1024), default=None)
    upn: Mapped[str | None] = mapped_column(String(320), default=None, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    profile: Mapped[Profile] = relationship(lazy="joined")
    storage_region: Mapped[StorageRegion] = relationship(lazy="joined")

    @property
    def quota_bytes(self) -> int:
        return self.quota_value * self.quota_unit.bytes
