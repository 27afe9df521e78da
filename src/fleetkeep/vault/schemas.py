"""Request and response bodies of the vault's device and admin APIs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SessionBegun(BaseModel):
    session_id: int
    dek: str = Field(description="the user's data key, base64; keep it in memory only")
    used_bytes: int
    quota_bytes: int = Field(description="0 = unlimited")
    max_object_bytes: int
    direct_upload: bool = Field(
        description="packs may go straight to the store (POST …/direct-uploads)"
    )


class RepositoryKey(BaseModel):
    dek: str
    exists: bool


class UploadOut(BaseModel):
    name: str
    stored: bool = Field(description="false when the object was already in the repository")


class ProgressIn(BaseModel):
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    new_bytes: int = 0
    unchanged_files: int = 0
    errors: int = 0


class AbortIn(BaseModel):
    reason: str = Field(default="", max_length=1000)


class ObjectOut(BaseModel):
    name: str
    size: int
    modified: datetime


class ObjectPage(BaseModel):
    items: list[ObjectOut]
    next_after: str | None = None


class SnapshotOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    snapshot_id: str
    user_id: int
    device_id: int | None
    session_id: int | None
    time: datetime
    committed_at: datetime
    hostname: str
    paths: list[str]
    file_count: int
    dir_count: int
    size_bytes: int
    new_bytes: int
    stored_bytes: int
    errors: int
    duration_ms: int


class SessionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    device_id: int
    user_id: int
    state: str
    started_at: datetime
    last_activity_at: datetime
    finished_at: datetime | None
    uploaded_objects: int
    uploaded_bytes: int
    progress: dict[str, Any]
    error_code: str
    error_detail: str
    snapshot_id: str | None


class RestoreOutcomeIn(BaseModel):
    status: str = Field(pattern="^(done|failed)$")
    detail: str = Field(default="", max_length=1000)


class DirectUploadIn(BaseModel):
    name: str
    size: int


class DirectUploadOut(BaseModel):
    url: str | None = Field(description="PUT the pack here; null when it is already stored")


class ConfirmIn(BaseModel):
    name: str
