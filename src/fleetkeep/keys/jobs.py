"""The keys capability's periodic job: finish rewraps and rotate on schedule."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.jobs.scheduler import Job
from fleetkeep.keys.hub import process_hub
from fleetkeep.keys.service import Keyring, scheduled_rotation
from fleetkeep.settings import Settings


def key_jobs(settings: Settings) -> list[Job]:
    keyrings: dict[int, Keyring] = {}

    def rotation(factory: sessionmaker[Session]) -> None:
        if id(factory) not in keyrings:
            keyrings[id(factory)] = Keyring(settings, factory, process_hub())
        keyring = keyrings[id(factory)]
        scheduled_rotation(factory, keyring)

    return [Job("keys-rotation", timedelta(hours=1), rotation, lease=timedelta(minutes=30))]
