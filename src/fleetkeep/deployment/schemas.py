"""Request and response models of the deployment admin API and the device API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from fleetkeep.deployment.models import DeviceState, Platform, RestoreScope
from fleetkeep.web.schemas import Input, Output


class TokenCreate(Input):
    label: str = Field(min_length=1, max_length=200)
    expires_at: datetime | None = None
    profile_ids: list[int] = Field(default_factory=list, max_length=100)


class TokenOut(Output):
    id: int
    label: str
    prefix: str
    status: str
    profile_ids: list[int]
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    use_count: int
    last_used_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="the secret; shown only in this response")


class ActivationIn(Input):
    token: str | None = Field(default=None, max_length=200)
    auth_key: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    upn: str | None = Field(default=None, max_length=320)
    username: str | None = Field(default=None, max_length=256)
    domain: str | None = Field(default=None, max_length=256)
    password: str | None = Field(default=None, max_length=1024)
    hostname: str = Field(min_length=1, max_length=255)
    platform: Platform
    serial_number: str = Field(default="", max_length=128)
    hardware_uuid: str = Field(default="", max_length=64)
    os: str = Field(default="", max_length=200)
    agent_version: str = Field(default="", max_length=64)
    device_name: str = Field(default="", max_length=255)
    os_username: str = Field(default="", max_length=256)
    home_dir: str = Field(default="", max_length=1024)


class ActivationOut(Output):
    device_id: int
    device_token: str = Field(description="the device's secret; shown only in this response")
    mode: str
    reactivated: bool
    restore_plan: bool
    config: dict[str, Any]


class HeartbeatIn(Input):
    agent_version: str | None = Field(default=None, max_length=64)


class HeartbeatOut(Output):
    device_id: int
    state: DeviceState
    config: dict[str, Any]


class DeviceOut(Output):
    id: int
    user_id: int
    user_email: str
    name: str
    hostname: str
    serial_number: str
    hardware_uuid: str
    os: str
    platform: Platform
    agent_version: str
    state: DeviceState
    activation_mode: str
    replaces_id: int | None
    replaced_by_id: int | None
    replacement_scope: RestoreScope | None
    activated_at: datetime
    last_seen_at: datetime
    last_backup_at: datetime | None


class ReplaceIn(Input):
    restore: RestoreScope = RestoreScope.ALL


class RestorePlanOut(Output):
    id: int
    device_id: int
    source_device_id: int | None
    scope: RestoreScope
    status: str
    plan: dict[str, Any]
    created_at: datetime


class StepOut(Output):
    rule: str
    outcome: str
    detail: str


class ExplanationOut(Output):
    outcome: str
    code: str | None
    reason: str
    mode: str
    user_id: int | None
    user_email: str | None
    device_id: int | None
    replaces_device_id: int | None
    steps: list[StepOut]


class AuthKeyCreate(Input):
    user_id: int
    expires_at: datetime | None = None


class AuthKeyCreated(Output):
    id: int
    user_id: int
    key: str = Field(description="the one-time key; shown only in this response")
    expires_at: datetime | None


class MappingOut(Output):
    id: int
    email: str
    user_id: int
    username: str
    device_name: str
    identifier_type: str
    identifier: str
    old_device_name: str
    restore_scope: RestoreScope | None
    uploaded_at: datetime
    consumed_at: datetime | None
    device_id: int | None


class MappingImportOut(Output):
    imported: int
