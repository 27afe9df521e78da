"""Work on users' repositories that needs no device: check, and retention (forget + prune).

Both open each repository in a short database transaction (for the DEK) and then work on the
store outside it. Retention never blocks backups: prune deletes packs in two phases separated
by a grace period (``backup.prune``), so a backup that deduplicated against a pack prune
marked keeps it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.backup import BackupError, Repository, RepositoryNotFound
from fleetkeep.backup.check import CheckReport
from fleetkeep.backup.prune import DEFAULT_GRACE, PruneReport
from fleetkeep.db import transaction
from fleetkeep.errors import FleetkeepError
from fleetkeep.identity.models import Profile, User, UserState
from fleetkeep.keys.service import Keyring
from fleetkeep.vault import catalogue
from fleetkeep.vault.policy import retention_policy
from fleetkeep.vault.repositories import open_user_repository
from fleetkeep.vault.sessions import recount_stored_bytes

log = logging.getLogger("fleetkeep.vault")


@dataclass(frozen=True)
class UserCheck:
    """One user's check: ``report`` when the repository could be checked, else ``error``."""

    user_id: int
    email: str
    report: CheckReport | None = None
    error: str | None = None
    missing: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and (self.report is None or self.report.ok)


@dataclass(frozen=True)
class RetentionResult:
    user_id: int
    forgotten: list[str]
    prune: PruneReport | None


def _open(
    factory: sessionmaker[Session], keyring: Keyring, user_id: int
) -> tuple[User, Repository]:
    with transaction(factory) as session:
        user = session.get_one(User, user_id)
        repo = open_user_repository(session, keyring, user)
        session.expunge(user)
        return user, repo


def check_users(
    factory: sessionmaker[Session],
    keyring: Keyring,
    user_ids: Iterable[int],
    *,
    read_data: bool = False,
) -> Iterator[UserCheck]:
    """Check each user's repository in turn; a user without one is reported as ``missing``."""
    for user_id in user_ids:
        with transaction(factory) as session:
            email = session.get_one(User, user_id).email
        try:
            _, repo = _open(factory, keyring, user_id)
        except RepositoryNotFound:
            yield UserCheck(user_id, email, missing=True)
            continue
        except FleetkeepError as exc:
            yield UserCheck(user_id, email, error=f"{exc.detail} [{exc.code}]")
            continue
        try:
            yield UserCheck(user_id, email, report=repo.check(read_data=read_data))
        except BackupError as exc:
            yield UserCheck(user_id, email, error=f"{exc.detail} [{exc.code}]")


def users_with_data(session: Session) -> list[int]:
    """Users whose backups are kept (not deleted), by id."""
    return list(
        session.scalars(select(User.id).where(User.state != UserState.DELETED).order_by(User.id))
    )


def apply_retention(
    factory: sessionmaker[Session],
    keyring: Keyring,
    user_id: int,
    *,
    now: datetime | None = None,
    grace: timedelta = DEFAULT_GRACE,
) -> RetentionResult | None:
    """Forget the snapshots the user's profile no longer keeps, then prune; None when the
    user has no repository yet."""
    with transaction(factory) as session:
        user = session.get_one(User, user_id)
        policy = retention_policy(session.get_one(Profile, user.profile_id).policy)
        try:
            repo = open_user_repository(session, keyring, user)
        except RepositoryNotFound:
            return None
    forgotten = repo.forget(policy, now=now)
    # Prune also when nothing was forgotten: an earlier run's marked packs are swept only by
    # a later prune, and packs left by crashed backups are reclaimed after the grace period.
    report = repo.prune(grace=grace, now=now)
    with transaction(factory) as session:
        catalogue.drop_snapshots(session, user_id, [s.id for s in forgotten])
        recount_stored_bytes(session, session.get_one(User, user_id))
    return RetentionResult(user_id, [s.id for s in forgotten], report)


def scheduled_retention(
    factory: sessionmaker[Session],
    keyring: Keyring,
    *,
    now: datetime | None = None,
    grace: timedelta = DEFAULT_GRACE,
) -> list[RetentionResult]:
    """The periodic job: retention for every user with data. One user's failure (a store
    outage, a damaged tree prune refuses to work on) is logged and the others go on."""
    with transaction(factory) as session:
        user_ids = users_with_data(session)
    results = []
    for user_id in user_ids:
        try:
            result = apply_retention(factory, keyring, user_id, now=now, grace=grace)
        except FleetkeepError as exc:
            log.warning(
                "retention failed",
                extra={"user_id": user_id, "code": exc.code, "detail": exc.detail},
            )
            continue
        if result is None:
            continue
        results.append(result)
        if result.forgotten or (result.prune and result.prune.packs_deleted):
            log.info(
                "retention applied",
                extra={
                    "user_id": user_id,
                    "forgotten": len(result.forgotten),
                    "packs_deleted": result.prune.packs_deleted if result.prune else 0,
                    "packs_repacked": result.prune.packs_repacked if result.prune else 0,
                },
            )
    return results
