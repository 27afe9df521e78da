from __future__ import annotations

from datetime import datetime

from pydantic import Field

from fleetkeep.keys.models import ProviderName
from fleetkeep.web.schemas import Input, Output


class ConnectorOut(Output):
    host: str
    version: str
    replica: str
    remote_addr: str
    connected_at: datetime
    last_seen_at: datetime
    holds_active_key: bool


class KeyStatusOut(Output):
    provider: ProviderName
    key_version: int
    kcv: str = Field(description="key check value of a local or connector key")
    key_ref: str = Field(description="the KMS key ARN")
    connected: bool
    detail: str
    last_rotation_at: datetime
    wrapped_by_version: dict[int, int]
    pending_rewrap: int
    connectors: list[ConnectorOut]
    rotation_days: int


class RotateIn(Input):
    provider: ProviderName | None = Field(
        default=None, description="switch provider; default: keep the active one"
    )
    kms_key_arn: str | None = Field(default=None, max_length=2048)


class RotationOut(Output):
    from_version: int | None
    to_version: int
    provider: ProviderName
    rewrapped: int


class UserKeyOut(Output):
    user_id: int
    key_version: int
    provider: ProviderName
    created_at: datetime
    rotated_at: datetime | None


class ConnectorTokenCreate(Input):
    label: str = Field(default="", max_length=200)


class ConnectorTokenOut(Output):
    id: int
    label: str
    prefix: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    last_used_at: datetime | None


class ConnectorTokenCreated(ConnectorTokenOut):
    token: str = Field(description="shown once; only its hash is kept")
