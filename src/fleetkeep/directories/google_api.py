"""``/api/v1/google``: register a Google Workspace directory and sync it now.

Mappings, sync history and confirming held syncs use the generic ``/directories/{id}/…`` routes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, status
from pydantic import Field, SecretStr
from starlette.concurrency import run_in_threadpool

from fleetkeep.directories import google
from fleetkeep.directories import service as directories
from fleetkeep.directories.schemas import SyncRunOut
from fleetkeep.web.deps import AppSettings, CurrentActor, DbSession
from fleetkeep.web.schemas import Input

router = APIRouter(prefix="/google", tags=["google"])


class GoogleDirectoryCreate(Input):
    name: str = Field(min_length=1, max_length=200)
    service_account_key: SecretStr = Field(description="the service account's JSON key")
    admin_email: str = Field(description="the administrator the service account acts as")
    customer: str = "my_customer"
    domain: str = ""
    groups: list[str] = Field(default_factory=list, description="group emails; none: all users")
    api_url: str = google.DEFAULT_API
    token_uri: str = ""
    ca_file: str = ""
    sync_interval_hours: float = 24.0
    hold_above_count: int = 500
    hold_above_percent: float = 10.0


@router.post("/directories", status_code=status.HTTP_201_CREATED)
def create_directory(
    body: GoogleDirectoryCreate, session: DbSession, actor: CurrentActor, settings: AppSettings
) -> dict[str, Any]:
    directory = google.create_google_directory(
        session,
        actor,
        settings.data_dir,
        name=body.name,
        service_account_key=body.service_account_key.get_secret_value(),
        settings=body.model_dump(
            include={
                "admin_email",
                "customer",
                "domain",
                "groups",
                "api_url",
                "token_uri",
                "ca_file",
            }
        ),
        sync_interval_hours=body.sync_interval_hours,
        hold_above_count=body.hold_above_count,
        hold_above_percent=body.hold_above_percent,
    )
    return directories.directory_view(directory)


@router.post("/directories/{directory_id}/sync")
async def sync_directory(
    directory_id: int,
    request: Request,
    actor: CurrentActor,
    settings: AppSettings,
    dry_run: bool = False,
) -> SyncRunOut:
    run = await run_in_threadpool(
        google.sync_google_directory,
        request.app.state.sessionmaker,
        actor,
        settings.data_dir,
        directory_id,
        dry_run=dry_run,
    )
    return SyncRunOut.model_validate(run)
