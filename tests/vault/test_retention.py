"""Retention per profile: validated policy fields, and the job that forgets and prunes
without taking data from a backup that runs at the same time."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.audit.service import SYSTEM
from fleetkeep.backup import Repository
from fleetkeep.backup.retention import RetentionPolicy
from fleetkeep.errors import InvalidInput
from fleetkeep.identity import service as identity
from fleetkeep.identity.models import User
from fleetkeep.jobs.registry import builtin_jobs
from fleetkeep.keys.service import Keyring
from fleetkeep.settings import Settings
from fleetkeep.vault.maintenance import scheduled_retention
from fleetkeep.vault.policy import retention_policy, validate_policy
from fleetkeep.vault.repositories import open_user_repository
from tests.backup.trees import describe
from tests.vault.conftest import make_user


def _files(root: Path, seed: int) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for i in range(20):
        (root / f"f{i}").write_bytes(rng.randbytes(40_000))
    return root


def _latest_only_user(session: Session, keyring: Keyring, blobs: Path) -> tuple[User, Repository]:
    """A user whose profile keeps one day of snapshots, with an empty repository."""
    user = make_user(session, blobs, policy={"retention": {"daily": 1, "weekly": 0, "monthly": 0}})
    repo = open_user_repository(session, keyring, user, create=True)
    session.commit()
    return user, repo


def test_missing_retention_takes_the_library_defaults() -> None:
    assert retention_policy({}) == RetentionPolicy()
    assert retention_policy({"retention": {"weekly": 10}}) == RetentionPolicy(weekly=10)


@pytest.mark.parametrize(
    ("retention", "field"),
    [
        ({"daily": -1}, "policy.retention.daily"),
        ({"weekly": "4"}, "policy.retention.weekly"),
        ({"monthly": 10_000}, "policy.retention.monthly"),
        ({"yearly": 3}, "policy.retention.yearly"),
    ],
)
def test_invalid_retention_is_refused_naming_the_field(
    retention: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_policy({"folders": ["~"], "retention": retention})
    assert caught.value.extra["field"] == field


def test_profiles_store_only_validated_retention(session: Session) -> None:
    profile = identity.create_profile(
        session, SYSTEM, name="staff", policy={"retention": {"daily": 30}, "other": 1}
    )
    assert profile.policy == {"retention": {"daily": 30}, "other": 1}
    with pytest.raises(InvalidInput):
        identity.update_profile(session, SYSTEM, profile.id, policy={"retention": {"daily": -3}})
    with pytest.raises(InvalidInput):
        identity.create_profile(session, SYSTEM, name="bad", policy={"retention": []})


def test_retention_is_a_builtin_job(settings: Settings) -> None:
    assert "vault-retention" in {job.name for job in builtin_jobs(settings)}


def test_job_forgets_per_profile_and_a_concurrent_backup_keeps_its_data(
    factory: sessionmaker[Session],
    session: Session,
    keyring: Keyring,
    blobs: Path,
    tmp_path: Path,
) -> None:
    user, repo = _latest_only_user(session, keyring, blobs)
    old = _files(tmp_path / "old", 1)
    first = repo.backup([old], device="laptop")
    repo.backup([_files(tmp_path / "new", 2)], device="laptop")
    # Another device's backup has loaded the index (it knows old's chunks) before the job runs.
    concurrent = open_user_repository(session, keyring, user)
    session.commit()

    later = datetime.now(UTC) + timedelta(days=3)
    (marked,) = scheduled_retention(factory, keyring, now=later)
    assert marked.forgotten == [first.id]  # only the latest per device is in the window
    assert marked.prune is not None
    assert marked.prune.pending
    assert marked.prune.packs_deleted == 0  # marked, not deleted: backups may still use them

    late = concurrent.backup([old], device="desktop")
    assert late.stats["new_bytes"] < 10_000  # deduplicated against the marked packs

    (swept,) = scheduled_retention(factory, keyring, now=later + timedelta(hours=7))
    assert swept.prune is not None
    assert swept.prune.packs_resurrected > 0
    final = open_user_repository(session, keyring, user)
    assert final.check(read_data=True).ok
    assert {s.device for s in final.list_snapshots()} == {"laptop", "desktop"}
    final.restore(late.id, tmp_path / "out")
    assert describe(tmp_path / "out" / old.relative_to("/")) == describe(old)


def test_job_reclaims_space_of_forgotten_snapshots(
    factory: sessionmaker[Session],
    session: Session,
    keyring: Keyring,
    blobs: Path,
    tmp_path: Path,
) -> None:
    user, repo = _latest_only_user(session, keyring, blobs)
    repo.backup([_files(tmp_path / "old", 3)], device="laptop")
    kept = repo.backup([_files(tmp_path / "new", 4)], device="laptop")
    before = sum(o.size for o in repo.store.list("packs/"))
    later = datetime.now(UTC) + timedelta(days=3)
    scheduled_retention(factory, keyring, now=later)
    (swept,) = scheduled_retention(factory, keyring, now=later + timedelta(hours=7))
    assert swept.prune is not None
    assert swept.prune.packs_deleted > 0
    after = sum(o.size for o in repo.store.list("packs/"))
    assert after < before * 0.7
    final = open_user_repository(session, keyring, user)
    assert [s.id for s in final.list_snapshots()] == [kept.id]
    assert final.check(read_data=True).ok


def test_users_without_a_repository_are_skipped(
    factory: sessionmaker[Session], session: Session, keyring: Keyring, blobs: Path
) -> None:
    make_user(session, blobs)
    assert scheduled_retention(factory, keyring) == []
