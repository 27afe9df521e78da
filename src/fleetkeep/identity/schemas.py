from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from fleetkeep.identity.models import QuotaUnit, UserState
from fleetkeep.web.schemas import Input, Output


class Quota(Input):
    value: int = Field(ge=0, le=10**9, description="0 means unlimited")
    unit: QuotaUnit = QuotaUnit.GB


class ProfileCreate(Input):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    login_method: str = Field(default="password", pattern="^(password|directory|sso)$")
    max_devices_per_user: int = Field(default=3, ge=1, le=100)
    backup_interval_minutes: int = Field(default=240, ge=5, le=10080)
    policy: dict[str, Any] = Field(default_factory=dict)
    default_quota: Quota = Field(default_factory=lambda: Quota(value=0))


class ProfileUpdate(Input):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    login_method: str | None = Field(default=None, pattern="^(password|directory|sso)$")
    max_devices_per_user: int | None = Field(default=None, ge=1, le=100)
    backup_interval_minutes: int | None = Field(default=None, ge=5, le=10080)
    policy: dict[str, Any] | None = None
    default_quota: Quota | None = None


class ProfileOut(Output):
    id: int
    name: str
    description: str
    login_method: str
    max_devices_per_user: int
    backup_interval_minutes: int
    policy: dict[str, Any]
    default_quota: Quota
    created_at: datetime


class RegionCreate(Input):
    name: str = Field(min_length=1, max_length=200)
    region: str = Field(default="", max_length=100)
    store_url: str = Field(min_length=7, max_length=1000)


class RegionUpdate(Input):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    region: str | None = Field(default=None, max_length=100)
    store_url: str | None = Field(default=None, min_length=7, max_length=1000)


class RegionOut(Output):
    id: int
    name: str
    region: str
    store_url: str
    created_at: datetime


class UserCreate(Input):
    email: str = Field(min_length=3, max_length=320)
    username: str = Field(default="", max_length=256)
    display_name: str = Field(default="", max_length=256)
    profile_id: int
    storage_region_id: int
    quota: Quota | None = Field(default=None, description="defaults to the profile's quota")


class UserUpdate(Input):
    email: str | None = Field(default=None, min_length=3, max_length=320)
    username: str | None = Field(default=None, max_length=256)
    display_name: str | None = Field(default=None, max_length=256)
    profile_id: int | None = None
    storage_region_id: int | None = None
    quota: Quota | None = None


class UserOut(Output):
    id: int
    email: str
    username: str
    display_name: str
    state: UserState
    preserved_by: str | None
    profile_id: int
    storage_region_id: int
    quota: Quota
    quota_bytes: int
    source: str
    external_id: str | None
    upn: str | None
    created_at: datetime
    state_changed_at: datetime
