"""Request and response bodies of ``/api/v1/directories``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field, SecretStr

from fleetkeep.directories.models import DirectoryKind, MappingPurpose, SyncStatus
from fleetkeep.identity.models import QuotaUnit
from fleetkeep.web.schemas import Input, Output


class DirectoryCreate(Input):
    name: str = Field(min_length=1, max_length=200)
    kind: DirectoryKind
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="AD/LDAP: hosts, port, security (none|starttls|ldaps), ca_cert, bind_dn,"
        " base_dn, user_filter, group_filter, disabled_filter, attributes, netbios_domain,"
        " page_size, timeout_seconds",
    )
    bind_password: SecretStr | None = Field(
        default=None, description="stored sealed; never returned"
    )
    enabled: bool = True
    sync_interval_hours: float = Field(default=24.0, gt=0, le=24 * 365)
    auto_update: bool = True
    auto_preserve: bool = True
    hold_above_count: int = Field(default=500, ge=0)
    hold_above_percent: float = Field(default=10.0, ge=0, le=100)


class DirectoryUpdate(Input):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    settings: dict[str, Any] | None = Field(default=None, description="merged into the current")
    bind_password: SecretStr | None = None
    enabled: bool | None = None
    sync_interval_hours: float | None = Field(default=None, gt=0, le=24 * 365)
    auto_update: bool | None = None
    auto_preserve: bool | None = None
    hold_above_count: int | None = Field(default=None, ge=0)
    hold_above_percent: float | None = Field(default=None, ge=0, le=100)


class DirectoryOut(Output):
    id: int
    name: str
    kind: DirectoryKind
    settings: dict[str, Any]
    has_secret: bool
    enabled: bool
    sync_interval_hours: float
    auto_update: bool
    auto_preserve: bool
    hold_above_count: int
    hold_above_percent: float
    last_sync_at: datetime | None
    created_at: datetime


class MappingCreate(Input):
    name: str = Field(default="", max_length=200)
    purpose: MappingPurpose = MappingPurpose.IMPORT
    rule: dict[str, Any] = Field(
        description='{"type": "all" | "group" | "ou" | "attribute" | "filter", …}'
    )
    profile_id: int
    storage_region_id: int
    quota_value: int | None = Field(default=None, ge=0, le=10**9)
    quota_unit: QuotaUnit | None = None
    auto_import: bool = True
    priority: int | None = Field(
        default=None, ge=0, le=1_000_000, description="lower wins; default: after the others"
    )


class MappingOrder(Input):
    mapping_ids: list[int] = Field(description="every mapping of the directory, first wins")


class MappingUpdate(Input):
    name: str | None = Field(default=None, max_length=200)
    purpose: MappingPurpose | None = None
    rule: dict[str, Any] | None = None
    profile_id: int | None = None
    storage_region_id: int | None = None
    quota_value: int | None = Field(default=None, ge=0, le=10**9)
    quota_unit: QuotaUnit | None = None
    auto_import: bool | None = None
    priority: int | None = Field(default=None, ge=0, le=1_000_000)


class MappingOut(Output):
    id: int
    directory_id: int
    name: str
    purpose: MappingPurpose
    rule: dict[str, Any]
    profile_id: int
    storage_region_id: int
    quota_value: int | None
    quota_unit: QuotaUnit | None
    auto_import: bool
    priority: int


class StepOut(Output):
    name: str
    ok: bool
    detail: str
    host: str
    field: str | None


class ConnectionTestOut(Output):
    ok: bool
    failed_step: str | None
    field: str | None
    steps: list[StepOut]


class SyncRunOut(Output):
    id: int
    directory_id: int
    status: SyncStatus
    dry_run: bool
    trigger: str
    actor: str
    started_at: datetime
    finished_at: datetime | None
    duration_ms: int
    seen: int
    created: int
    updated: int
    preserved: int
    reactivated: int
    skipped: int
    errors: int
    error: str | None
    held_reason: str | None
    confirmed_by: str | None
    report: dict[str, Any]
