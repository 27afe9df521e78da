"""The directories' periodic job: sync every AD/LDAP directory whose interval has elapsed."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.audit.service import Actor
from fleetkeep.directories.service import sync_due_directories
from fleetkeep.jobs.scheduler import Job
from fleetkeep.settings import Settings

SCHEDULER = Actor("system:directory-sync")


def directory_jobs(settings: Settings) -> list[Job]:
    def sync_due(factory: sessionmaker[Session]) -> None:
        sync_due_directories(factory, SCHEDULER, settings.data_dir)

    # Checked every few minutes; each directory's own interval (default 24 h) decides.
    return [Job("directory-sync", timedelta(minutes=5), sync_due, lease=timedelta(minutes=30))]
