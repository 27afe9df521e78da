"""``/api/v1/entra``: register a Microsoft Entra ID directory and sync it now.

Mappings, sync history and confirming held syncs use the generic ``/directories/{id}/…`` routes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, status
from pydantic import Field, SecretStr
from starlette.concurrency import run_in_threadpool

from fleetkeep.directories import entra
from fleetkeep.directories import service as directories
from fleetkeep.directories.schemas import SyncRunOut
from fleetkeep.web.deps import AppSettings, CurrentActor, DbSession
from fleetkeep.web.schemas import Input

router = APIRouter(prefix="/entra", tags=["entra"])


class EntraDirectoryCreate(Input):
    name: str = Field(min_length=1, max_length=200)
    tenant_id: str = Field(min_length=1, max_length=200, description="tenant id or domain")
    client_id: str = Field(description="the app registration's application (client) id")
    client_secret: SecretStr
    groups: list[str] = Field(default_factory=list, description="group object ids; none: all users")
    use_delta: bool = True
    authority_url: str = entra.DEFAULT_AUTHORITY
    graph_url: str = entra.DEFAULT_GRAPH
    ca_file: str = ""
    sync_interval_hours: float = 24.0
    hold_above_count: int = 500
    hold_above_percent: float = 10.0


@router.post("/directories", status_code=status.HTTP_201_CREATED)
def create_directory(
    body: EntraDirectoryCreate, session: DbSession, actor: CurrentActor, settings: AppSettings
) -> dict[str, Any]:
    directory = entra.create_entra_directory(
        session,
        actor,
        settings.data_dir,
        name=body.name,
        client_secret=body.client_secret.get_secret_value(),
        settings=body.model_dump(
            include={
                "tenant_id",
                "client_id",
                "groups",
                "use_delta",
                "authority_url",
                "graph_url",
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
    """Read Graph now and plan/apply; the run says succeeded, held, failed or dry-run."""
    run = await run_in_threadpool(
        entra.sync_entra_directory,
        request.app.state.sessionmaker,
        actor,
        settings.data_dir,
        directory_id,
        dry_run=dry_run,
    )
    return SyncRunOut.model_validate(run)
