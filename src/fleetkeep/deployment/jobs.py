"""Periodic deployment work: devices that stopped calling home become inactive."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.audit.service import SYSTEM
from fleetkeep.db import transaction
from fleetkeep.deployment.devices import mark_inactive_devices
from fleetkeep.jobs.scheduler import Job
from fleetkeep.settings import Settings


def deployment_jobs(settings: Settings) -> list[Job]:
    def mark_inactive(factory: sessionmaker[Session]) -> None:
        with transaction(factory) as session:
            mark_inactive_devices(session, SYSTEM, settings.device_inactive_days)

    return [Job("mark-inactive-devices", timedelta(days=1), mark_inactive)]
