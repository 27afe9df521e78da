"""The vault's periodic job: retention (forget per profile, then prune) for every user."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.db import transaction
from fleetkeep.jobs.scheduler import Job
from fleetkeep.keys.hub import process_hub
from fleetkeep.keys.service import Keyring
from fleetkeep.settings import Settings
from fleetkeep.vault.maintenance import scheduled_retention
from fleetkeep.vault.sessions import expire_stale_sessions


def vault_jobs(settings: Settings) -> list[Job]:
    keyrings: dict[int, Keyring] = {}

    def retention(factory: sessionmaker[Session]) -> None:
        if id(factory) not in keyrings:
            keyrings[id(factory)] = Keyring(settings, factory, process_hub())
        scheduled_retention(factory, keyrings[id(factory)])

    def stale_sessions(factory: sessionmaker[Session]) -> None:
        with transaction(factory) as session:
            expire_stale_sessions(session)

    # Daily: retention buckets are calendar days, and prune walks every tree of every user,
    # too costly to repeat hourly. Packs a run marks are swept by the next run (grace 6 h).
    return [
        Job("vault-retention", timedelta(hours=24), retention, lease=timedelta(minutes=30)),
        Job("vault-stale-sessions", timedelta(hours=1), stale_sessions),
    ]
