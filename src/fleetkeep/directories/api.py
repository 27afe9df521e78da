"""``/api/v1/directories``: directories, their mappings, connection tests and syncs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status

from fleetkeep.directories import service
from fleetkeep.directories.models import Directory
from fleetkeep.directories.schemas import (
    ConnectionTestOut,
    DirectoryCreate,
    DirectoryOut,
    DirectoryUpdate,
    MappingCreate,
    MappingOrder,
    MappingOut,
    MappingUpdate,
    StepOut,
    SyncRunOut,
)
from fleetkeep.web.deps import AppSettings, CurrentActor, DbSession
from fleetkeep.web.pagination import Page, decode_cursor, next_cursor

router = APIRouter(prefix="/directories", tags=["directories"])


def directory_out(directory: Directory) -> DirectoryOut:
    view = service.directory_view(directory)
    return DirectoryOut(
        **view, last_sync_at=directory.last_sync_at, created_at=directory.created_at
    )


def _secret(body: DirectoryCreate | DirectoryUpdate) -> str | None:
    return None if body.bind_password is None else body.bind_password.get_secret_value()


@router.get("")
def list_directories(session: DbSession) -> list[DirectoryOut]:
    return [directory_out(d) for d in service.list_directories(session)]


@router.post("", status_code=status.HTTP_201_CREATED)
def create_directory(
    body: DirectoryCreate, session: DbSession, actor: CurrentActor, settings: AppSettings
) -> DirectoryOut:
    fields = body.model_dump(exclude={"bind_password", "name", "kind"})
    directory = service.create_directory(
        session,
        actor,
        settings.data_dir,
        name=body.name,
        kind=body.kind,
        secret=_secret(body),
        **fields,
    )
    return directory_out(directory)


@router.get("/{directory_id}")
def get_directory(directory_id: int, session: DbSession) -> DirectoryOut:
    return directory_out(service.get_directory(session, directory_id))


@router.patch("/{directory_id}")
def update_directory(
    directory_id: int,
    body: DirectoryUpdate,
    session: DbSession,
    actor: CurrentActor,
    settings: AppSettings,
) -> DirectoryOut:
    fields = body.model_dump(exclude_unset=True, exclude={"bind_password"})
    directory = service.update_directory(
        session, actor, settings.data_dir, directory_id, secret=_secret(body), **fields
    )
    return directory_out(directory)


@router.delete("/{directory_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_directory(directory_id: int, session: DbSession, actor: CurrentActor) -> None:
    service.delete_directory(session, actor, directory_id)


@router.post("/{directory_id}/test")
def test_directory(
    directory_id: int, session: DbSession, settings: AppSettings
) -> ConnectionTestOut:
    report = service.diagnose_directory(session, settings.data_dir, directory_id)
    failure = report.failure
    return ConnectionTestOut(
        ok=report.ok,
        failed_step=failure.name if failure else None,
        field=failure.field if failure else None,
        steps=[StepOut.model_validate(s) for s in report.steps],
    )


@router.post("/{directory_id}/sync")
def sync_directory(
    directory_id: int,
    request: Request,
    session: DbSession,
    actor: CurrentActor,
    settings: AppSettings,
    dry_run: bool = False,
) -> SyncRunOut:
    """Run a sync now and return its run: succeeded, held for confirmation, failed, or dry-run."""
    service.get_directory(session, directory_id)
    session.commit()
    run = service.sync_directory(
        request.app.state.sessionmaker, actor, settings.data_dir, directory_id, dry_run=dry_run
    )
    return SyncRunOut.model_validate(run)


@router.get("/{directory_id}/syncs")
def list_syncs(
    directory_id: int,
    session: DbSession,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Page[SyncRunOut]:
    runs = service.list_sync_runs(
        session, directory_id, after_id=decode_cursor(cursor), limit=limit
    )
    return Page(
        items=[SyncRunOut.model_validate(r) for r in runs],
        next_cursor=next_cursor([r.id for r in runs], limit),
    )


@router.get("/{directory_id}/syncs/{run_id}")
def get_sync(directory_id: int, run_id: int, session: DbSession) -> SyncRunOut:
    return SyncRunOut.model_validate(service.get_sync_run(session, directory_id, run_id))


@router.post("/{directory_id}/syncs/{run_id}/confirm")
def confirm_sync(
    directory_id: int, run_id: int, session: DbSession, actor: CurrentActor
) -> SyncRunOut:
    """Apply a sync that was held by the safety threshold."""
    return SyncRunOut.model_validate(
        service.confirm_held_sync(session, actor, directory_id, run_id)
    )


@router.get("/{directory_id}/mappings")
def list_mappings(directory_id: int, session: DbSession) -> list[MappingOut]:
    return [MappingOut.model_validate(m) for m in service.list_mappings(session, directory_id)]


@router.post("/{directory_id}/mappings", status_code=status.HTTP_201_CREATED)
def create_mapping(
    directory_id: int,
    body: MappingCreate,
    session: DbSession,
    actor: CurrentActor,
    settings: AppSettings,
) -> MappingOut:
    fields: dict[str, Any] = body.model_dump()
    mapping = service.create_mapping(
        session, actor, directory_id, data_dir=settings.data_dir, **fields
    )
    return MappingOut.model_validate(mapping)


@router.put("/{directory_id}/mappings/order")
def reorder_mappings(
    directory_id: int, body: MappingOrder, session: DbSession, actor: CurrentActor
) -> list[MappingOut]:
    """Set the priorities: the first listed mapping wins over the others."""
    mappings = service.reorder_mappings(session, actor, directory_id, body.mapping_ids)
    return [MappingOut.model_validate(m) for m in mappings]


@router.patch("/{directory_id}/mappings/{mapping_id}")
def update_mapping(
    directory_id: int,
    mapping_id: int,
    body: MappingUpdate,
    session: DbSession,
    actor: CurrentActor,
    settings: AppSettings,
) -> MappingOut:
    fields = body.model_dump(exclude_unset=True)
    mapping = service.update_mapping(
        session, actor, directory_id, mapping_id, data_dir=settings.data_dir, **fields
    )
    return MappingOut.model_validate(mapping)


@router.delete("/{directory_id}/mappings/{mapping_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_mapping(
    directory_id: int, mapping_id: int, session: DbSession, actor: CurrentActor
) -> None:
    service.delete_mapping(session, actor, directory_id, mapping_id)
