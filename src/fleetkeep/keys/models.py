from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from fleetkeep.db import Base, str_enum, utcnow


class ProviderName(enum.StrEnum):
    LOCAL = "local"
    CONNECTOR = "connector"
    AWSKMS = "awskms"


class KeyVersion(Base):
    """One organization key version: who holds it and how to recognise it.

    ``kcv`` is the key check value of a local or connector key; ``key_ref`` the KMS key ARN.
    Exactly one version is active; older ones stay until no DEK is wrapped by them.
    """

    __tablename__ = "key_versions"

    version: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    provider: Mapped[ProviderName] = mapped_column(str_enum(ProviderName, 16))
    kcv: Mapped[str] = mapped_column(String(64), default="")
    key_ref: Mapped[str] = mapped_column(String(2048), default="")
    active: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(320), default="system")


class WrappedKey(Base):
    """A user's data key (DEK), wrapped by the organization key of ``key_version``.

    Deleting the user deletes this row, which makes their backups unreadable (crypto-shredding).
    """

    __tablename__ = "wrapped_keys"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    key_version: Mapped[int] = mapped_column(ForeignKey("key_versions.version"), index=True)
    provider: Mapped[ProviderName] = mapped_column(str_enum(ProviderName, 16))
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    rotated_at: Mapped[datetime | None] = mapped_column(default=None)


class ConnectorToken(Base):
    """A key connector's credential; only the SHA-256 of the secret is kept."""

    __tablename__ = "connector_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(320), default="")
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


class ConnectorSession(Base):
    """One connection of a key connector to one server replica, kept for ``keys status``."""

    __tablename__ = "connector_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_id: Mapped[int] = mapped_column(
        ForeignKey("connector_tokens.id", ondelete="CASCADE"), index=True
    )
    host: Mapped[str] = mapped_column(String(255), default="")
    version: Mapped[str] = mapped_column(String(40), default="")
    remote_addr: Mapped[str] = mapped_column(String(64), default="")
    replica: Mapped[str] = mapped_column(String(255), default="")
    kcvs: Mapped[str] = mapped_column(String(2000), default="")
    connected_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    disconnected_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
