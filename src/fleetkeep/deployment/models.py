"""Tables of mass deployment: tokens, devices, IMD v4 device mappings, auth keys, restore plans."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from fleetkeep.db import Base, str_enum, utcnow
from fleetkeep.identity.models import User


class DeviceState(enum.StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"
    INACTIVE = "inactive"
    PENDING_REPLACEMENT = "pending-replacement"
    DECOMMISSIONED = "decommissioned"


class Platform(enum.StrEnum):
    WINDOWS = "windows"
    MACOS = "macos"
    LINUX = "linux"
    ANDROID = "android"
    IOS = "ios"


class RestoreScope(enum.StrEnum):
    ALL = "ALL"
    SYSTEM = "SYSTEM"
    DATA = "DATA"


class IdentifierType(enum.StrEnum):
    SERIAL_NUMBER = "serial-number"
    UUID = "uuid"
    HOSTNAME = "hostname"


class DeploymentToken(Base):
    """A mass deployment token; many may be live at once. Only the SHA-256 of the secret is kept."""

    __tablename__ = "deployment_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Profile ids this token may activate into; empty means any profile.
    profile_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class TokenUse(Base):
    """One activation through a deployment token.

    Usage is appended, never counted in place: an activation storm on one token would otherwise
    queue every transaction behind the token row's lock.
    """

    __tablename__ = "deployment_token_uses"
    __table_args__ = (Index("ix_deployment_token_uses_token_at", "token_id", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("deployment_tokens.id", ondelete="CASCADE"))
    device_id: Mapped[int | None] = mapped_column(default=None)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Device(Base):
    """An endpoint bound to one user.

    ``serial_key`` and ``uuid_key`` carry the hardware identity while the device is not
    decommissioned; their unique indexes stop two live devices claiming the same hardware, even
    when concurrent activations race.
    """

    __tablename__ = "devices"
    __table_args__ = (
        Index("ix_devices_user_state", "user_id", "state"),
        Index("ix_devices_state_last_seen", "state", "last_seen_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    hostname: Mapped[str] = mapped_column(String(255), index=True)
    serial_number: Mapped[str] = mapped_column(String(128), default="")
    hardware_uuid: Mapped[str] = mapped_column(String(64), default="")
    serial_key: Mapped[str | None] = mapped_column(String(128), unique=True, default=None)
    uuid_key: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    os: Mapped[str] = mapped_column(String(200), default="")
    platform: Mapped[Platform] = mapped_column(str_enum(Platform, 10))
    os_username: Mapped[str] = mapped_column(String(256), default="")
    home_dir: Mapped[str] = mapped_column(String(1024), default="")
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[DeviceState] = mapped_column(
        str_enum(DeviceState, 24), default=DeviceState.ACTIVE
    )
    activation_mode: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    # Set by an admin (or a v4 row) when the device is marked for replacement.
    replacement_scope: Mapped[RestoreScope | None] = mapped_column(
        str_enum(RestoreScope, 8), default=None
    )
    replaces_id: Mapped[int | None] = mapped_column(
        ForeignKey("devices.id", ondelete="SET NULL"), default=None
    )
    replaced_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("devices.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    activated_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_backup_at: Mapped[datetime | None] = mapped_column(default=None)
    state_changed_at: Mapped[datetime] = mapped_column(default=utcnow)

    user: Mapped[User] = relationship(lazy="joined")


class DeviceMapping(Base):
    """One IMD v4 row: which user a device identified by serial/UUID/hostname belongs to."""

    __tablename__ = "device_mappings"
    __table_args__ = (Index("ix_device_mappings_identifier", "identifier_type", "identifier"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    username: Mapped[str] = mapped_column(String(256))
    device_name: Mapped[str] = mapped_column(String(255))
    identifier_type: Mapped[IdentifierType] = mapped_column(str_enum(IdentifierType, 16))
    identifier: Mapped[str] = mapped_column(String(255))
    old_device_name: Mapped[str] = mapped_column(String(255), default="")
    restore_scope: Mapped[RestoreScope | None] = mapped_column(
        str_enum(RestoreScope, 8), default=None
    )
    uploaded_by: Mapped[str] = mapped_column(String(200))
    uploaded_at: Mapped[datetime] = mapped_column(default=utcnow)
    consumed_at: Mapped[datetime | None] = mapped_column(default=None)
    device_id: Mapped[int | None] = mapped_column(
        ForeignKey("devices.id", ondelete="SET NULL"), default=None
    )


class AuthKey(Base):
    """A one-time activation key for one user; consumed by its first use, even a failed one."""

    __tablename__ = "auth_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    consumed_at: Mapped[datetime | None] = mapped_column(default=None)


class RestorePlan(Base):
    """What a replacement device restores from the device it replaces, and where paths land."""

    __tablename__ = "restore_plans"

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), unique=True
    )
    source_device_id: Mapped[int | None] = mapped_column(
        ForeignKey("devices.id", ondelete="SET NULL")
    )
    scope: Mapped[RestoreScope] = mapped_column(str_enum(RestoreScope, 8))
    plan: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ActivationFailure(Base):
    """A refused activation, counted per source address and per token for rate limiting.

    Kept in the database rather than in memory so every replica sees the same counts.
    """

    __tablename__ = "activation_failures"
    __table_args__ = (
        Index("ix_activation_failures_source_at", "source", "at"),
        Index("ix_activation_failures_token_at", "token_id", "at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    token_id: Mapped[int | None] = mapped_column(default=None)
    code: Mapped[str] = mapped_column(String(40))
    at: Mapped[datetime] = mapped_column(default=utcnow)
