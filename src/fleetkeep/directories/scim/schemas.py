"""Request and response bodies of the SCIM admin endpoints under ``/api/v1/scim``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from fleetkeep.web.schemas import Input, Output


class TokenCreate(Input):
    regenerate: bool = False
    days: int = Field(default=365, ge=1, le=3650)


class TokenOut(Output):
    token: str | None = Field(default=None, description="the secret; shown only once")
    prefix: str
    created_at: datetime
    expires_at: datetime
    created_by: str
    scim_base_url: str


class MappingCreate(Input):
    rule: dict[str, Any] = Field(
        description='{"type": "all" | "group" | "attribute" | "filter", …} on SCIM attributes'
    )
    profile: str = Field(description="profile name or id")
    region: str = Field(description="storage region name or id")
    quota: str | None = Field(default=None, description="e.g. 50GB; omit for the profile default")
    priority: int = Field(default=100, ge=0, le=1_000_000)
    name: str = Field(default="", max_length=200)
