"""Periodic SCIM work: warn before the bearer token expires, so provisioning never stops."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.db import transaction
from fleetkeep.directories.scim.service import check_token_expiry
from fleetkeep.jobs.scheduler import Job
from fleetkeep.settings import Settings


def scim_jobs(settings: Settings) -> list[Job]:
    def token_expiry(factory: sessionmaker[Session]) -> None:
        with transaction(factory) as session:
            check_token_expiry(session)

    return [Job("scim-token-expiry", timedelta(hours=12), token_expiry)]
