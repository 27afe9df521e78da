from __future__ import annotations

from datetime import datetime

from pydantic import Field

from fleetkeep.admins.models import Role
from fleetkeep.web.schemas import Input, Output


class SignIn(Input):
    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)


class SignedIn(Output):
    token: str = Field(description="a console session token; shown once")
    expires_at: datetime | None
    admin: AdminOut


class AdminCreate(Input):
    email: str = Field(min_length=3, max_length=320)
    name: str = Field(default="", max_length=200)
    role: Role = Role.ADMIN
    password: str = Field(min_length=12, max_length=1024)


class AdminOut(Output):
    id: int
    email: str
    name: str
    role: Role
    disabled: bool
    created_at: datetime
    last_login_at: datetime | None


class TokenCreate(Input):
    label: str = Field(min_length=1, max_length=200)
    role: Role | None = Field(default=None, description="defaults to your own role")
    expires_at: datetime | None = None


class TokenOut(Output):
    id: int
    admin_id: int
    label: str
    prefix: str
    role: Role | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="the secret; shown only in this response")


SignedIn.model_rebuild()
