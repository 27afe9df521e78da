from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter

from fleetkeep.jobs.registry import builtin_jobs
from fleetkeep.jobs.scheduler import job_status
from fleetkeep.web.deps import AppSettings, DbSession
from fleetkeep.web.schemas import Output

router = APIRouter(tags=["jobs"])


class JobOut(Output):
    name: str
    interval_seconds: float | None
    next_run_at: datetime | None
    running_on: str | None
    last_status: str | None
    last_started_at: datetime | None
    last_finished_at: datetime | None
    last_error: str | None


@router.get("/jobs")
def jobs(session: DbSession, settings: AppSettings) -> list[JobOut]:
    intervals = {job.name: job.interval for job in builtin_jobs(settings)}
    return [
        JobOut(
            name=lease.name,
            interval_seconds=intervals[lease.name].total_seconds()
            if lease.name in intervals
            else None,
            next_run_at=lease.last_started_at + intervals[lease.name]
            if lease.last_started_at and lease.name in intervals
            else None,
            running_on=lease.holder,
            last_status=run.status if run else None,
            last_started_at=run.started_at if run else None,
            last_finished_at=run.finished_at if run else None,
            last_error=run.error if run else None,
        )
        for lease, run in job_status(session)
    ]
