from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter

from fleetkeep.jobs.scheduler import job_status
from fleetkeep.web.deps import DbSession
from fleetkeep.web.schemas import Output

router = APIRouter(tags=["jobs"])


class JobOut(Output):
    name: str
    next_run_at: datetime
    running_on: str | None
    last_status: str | None
    last_started_at: datetime | None
    last_finished_at: datetime | None
    last_error: str | None


@router.get("/jobs")
def jobs(session: DbSession) -> list[JobOut]:
    return [
        JobOut(
            name=lease.name,
            next_run_at=lease.next_run_at,
            running_on=lease.holder,
            last_status=run.status if run else None,
            last_started_at=run.started_at if run else None,
            last_finished_at=run.finished_at if run else None,
            last_error=run.error if run else None,
        )
        for lease, run in job_status(session)
    ]
