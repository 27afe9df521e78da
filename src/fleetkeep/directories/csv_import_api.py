"""``/api/v1/imports``: CSV user imports (multipart upload), their reports and rejected rows."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile, status
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from fleetkeep.directories import csv_import
from fleetkeep.directories.models import SyncRun
from fleetkeep.web.deps import AppSettings, CurrentActor, DbSession

router = APIRouter(prefix="/imports", tags=["imports"])
MAX_FILE_BYTES = 32 * 1024 * 1024


def import_view(run: SyncRun) -> dict[str, Any]:
    report = run.report
    return {
        "id": run.id,
        "status": str(run.status),
        "dry_run": run.dry_run,
        "file": report.get("file", ""),
        "rows": report.get("rows", 0),
        "counts": report.get("counts", {}),
        "rejected": len(report.get("rejected_rows", [])),
        "rejected_rows": report.get("rejected_rows", [])[:100],
        "errors_csv": f"/api/v1/imports/{run.id}/errors.csv",
        "error": run.error,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
    }


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_import(
    request: Request,
    file: Annotated[
        UploadFile, File(description="UTF-8 CSV: email, username, name, profile, region, quota")
    ],
    actor: CurrentActor,
    settings: AppSettings,
    dry_run: Annotated[bool, Form()] = False,
    profile: Annotated[str, Form(description="profile for rows without one")] = "",
    region: Annotated[str, Form(description="storage region for rows without one")] = "",
) -> dict[str, Any]:
    data = await file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise csv_import.ImportRefused(f"the file is larger than {MAX_FILE_BYTES} bytes; split it")
    result = await run_in_threadpool(
        csv_import.import_users,
        request.app.state.sessionmaker,
        actor,
        settings.data_dir,
        data,
        filename=file.filename or "",
        dry_run=dry_run,
        default_profile=profile,
        default_region=region,
    )
    return import_view(result.run)


@router.get("/{import_id}")
def get_import(import_id: int, session: DbSession) -> dict[str, Any]:
    return import_view(csv_import.get_import(session, import_id))


@router.get("/{import_id}/errors.csv")
def get_errors_csv(import_id: int, session: DbSession) -> PlainTextResponse:
    run = csv_import.get_import(session, import_id)
    return PlainTextResponse(
        csv_import.errors_csv(run),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="import-{import_id}-errors.csv"'},
    )
