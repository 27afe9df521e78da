"""The periodic jobs every scheduler runs. A capability adds its jobs to ``builtin_jobs``."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.audit.service import SYSTEM
from fleetkeep.db import transaction
from fleetkeep.deployment.jobs import deployment_jobs
from fleetkeep.directories.entra import entra_jobs
from fleetkeep.directories.google import google_jobs
from fleetkeep.directories.jobs import directory_jobs
from fleetkeep.directories.scim.jobs import scim_jobs
from fleetkeep.identity.service import purge_deleted_users
from fleetkeep.jobs.scheduler import Job
from fleetkeep.keys.jobs import key_jobs
from fleetkeep.settings import Settings
from fleetkeep.vault.jobs import vault_jobs


def builtin_jobs(settings: Settings) -> list[Job]:
    def purge(factory: sessionmaker[Session]) -> None:
        with transaction(factory) as session:
            purge_deleted_users(session, SYSTEM, settings.user_retention_days)

    jobs = [
        Job("purge-deleted-users", timedelta(hours=6), purge),
        *key_jobs(settings),
        *deployment_jobs(settings),
        *directory_jobs(settings),
        *scim_jobs(settings),
        *entra_jobs(settings),
        *google_jobs(settings),
        *vault_jobs(settings),
    ]
    return [_with_interval(job, settings) for job in jobs]


def _with_interval(job: Job, settings: Settings) -> Job:
    """``job_intervals = {name = seconds}`` in the settings overrides a job's interval."""
    seconds = settings.job_intervals.get(job.name)
    if seconds is None:
        return job
    return Job(job.name, timedelta(seconds=seconds), job.run, job.lease)
