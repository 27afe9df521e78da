"""Backing up and restoring this device through the server, and when the next backup is due.

A backup opens a session (the server checks the device, the user and the quota, and hands
out the user's data key, kept in memory only), runs the library's ``Repository.backup``
against :class:`RemoteStore`, and ends with the snapshot as the commit. Whatever stops it
half-way (a crash, a network cut longer than the retries, a refusal) leaves packs the next
backup adopts instead of uploading again; a refused or failed session is aborted so the
server's record says why.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fleetkeep.agent import state
from fleetkeep.agent.client import DeviceClient
from fleetkeep.agent.facts import device_facts
from fleetkeep.agent.remote import RemoteStore, UploadLimiter, VaultApi
from fleetkeep.agent.selection import backup_selection
from fleetkeep.backup import BackupProgress, Repository, RestoreStats, Snapshot, SnapshotNotFound

try:
    import fcntl
except ImportError:  # Windows: the service manager runs one agent anyway
    fcntl = None  # type: ignore[assignment]

SCHEDULE_FILE = "backup.json"
PROGRESS_EVERY_S = 5.0


class NothingToBackUp(Exception):
    """No configured folder exists on this device."""


class NoBackups(Exception):
    """The user has no repository yet, or no snapshot matches."""


def cache_dir() -> Path:
    return state.agent_dir() / "cache"


@dataclass
class Schedule:
    """What the daemon remembers between runs (and across crashes)."""

    last_finished_at: str | None = None
    last_snapshot: str | None = None
    last_error: str | None = None
    failures: int = 0

    @classmethod
    def load(cls) -> Schedule:
        try:
            return cls(**json.loads((state.agent_dir() / SCHEDULE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return cls()

    def save(self) -> None:
        path = state.agent_dir() / SCHEDULE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    def due_in(self, interval: timedelta, now: datetime) -> float:
        """Seconds until the next backup: the interval counted from the last finish; after a
        failure, a back-off doubling from one minute, never longer than the interval."""
        if self.last_finished_at is None:
            return 0.0
        last = datetime.fromisoformat(self.last_finished_at)
        wait = interval
        if self.failures:
            wait = min(interval, timedelta(minutes=1) * 2 ** min(self.failures - 1, 16))
        return max(0.0, (last + wait - now).total_seconds())

    def finished(self, snapshot: str | None, error: str | None) -> None:
        self.last_finished_at = datetime.now(UTC).isoformat()
        if error is None:
            self.last_snapshot, self.last_error, self.failures = snapshot, None, 0
        else:
            self.last_error, self.failures = error, self.failures + 1
        self.save()


@dataclass
class BackupResult:
    snapshot: dict[str, Any]
    uploaded_objects: int
    uploaded_bytes: int


ProgressCallback = Callable[[BackupProgress], None]


class BackupRunning(Exception):
    """Another backup of this device is running (the daemon, or a 'backup now')."""


@contextmanager
def backup_lock() -> Iterator[None]:
    """One backup per device at a time: a second one would abandon the first's session."""
    directory = state.agent_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (directory / "backup.lock").open("a") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BackupRunning("another backup of this device is running") from None
        yield


def upload_limit(policy: dict[str, Any], override_kbps: float | None) -> UploadLimiter | None:
    """The bandwidth cap: the command line's, else the profile's ``upload_limit_kbps``."""
    kbps = override_kbps if override_kbps is not None else policy.get("upload_limit_kbps")
    return UploadLimiter(float(kbps) * 1024) if kbps else None


def run_backup(
    enrollment: state.Enrollment,
    *,
    paths: list[str] | None = None,
    on_progress: ProgressCallback | None = None,
    limit_kbps: float | None = None,
) -> BackupResult:
    """One backup of this device. Raises ``ServerRefused`` (quota, key provider, …),
    ``httpx.TransportError`` (server unreachable after retries), ``NothingToBackUp`` or
    ``BackupRunning``."""
    with backup_lock():
        return _run_backup(enrollment, paths, on_progress, limit_kbps)


def _run_backup(
    enrollment: state.Enrollment,
    paths: list[str] | None,
    on_progress: ProgressCallback | None,
    limit_kbps: float | None,
) -> BackupResult:
    policy = enrollment.config.get("policy") or {}
    selection = backup_selection(policy, never=[state.agent_dir()])
    roots = paths or selection.paths
    if not roots:
        raise NothingToBackUp(f"none of the folders {policy.get('folders') or ['~']} exists")
    with DeviceClient(enrollment.server, enrollment.device_token) as client:
        api = VaultApi(client, limiter=upload_limit(policy, limit_kbps))
        begun = api.begin()
        session_id = int(begun["session_id"])
        api.direct = bool(begun.get("direct_upload"))
        store = RemoteStore(api, session_id)
        last_sent = 0.0

        def report(progress: BackupProgress) -> None:
            nonlocal last_sent
            if on_progress is not None:
                on_progress(progress)
            now = time.monotonic()
            if now - last_sent >= PROGRESS_EVERY_S:
                last_sent = now
                api.progress(session_id, _progress_fields(progress))

        try:
            repo = Repository.open(store, base64.b64decode(begun["dek"]), cache_dir=cache_dir())
            snap = repo.backup(
                roots,
                device=str(enrollment.device_id),
                hostname=device_facts()["hostname"],
                excludes=selection.excludes,
                cache_dir=cache_dir(),
                progress_cb=report,
            )
        except BaseException as exc:
            api.abort(session_id, f"{type(exc).__name__}: {exc}")
            raise
        assert store.committed is not None, "the library wrote no snapshot"
        assert store.committed["snapshot_id"] == snap.id
        return BackupResult(store.committed, store.uploaded, store.uploaded_bytes)


def _progress_fields(progress: BackupProgress) -> dict[str, int]:
    return {k: int(v) for k, v in asdict(progress).items() if k != "done"}


@contextmanager
def open_repository(client: DeviceClient) -> Iterator[Repository]:
    """The user's repository for reading (restores); its pack fetchers stop on exit."""
    api = VaultApi(client)
    key = api.repository_key()
    if not key["exists"]:
        raise NoBackups("nothing has been backed up for this user yet")
    store = RemoteStore(api)
    try:
        yield Repository.open(store, base64.b64decode(key["dek"]), cache_dir=cache_dir())
    finally:
        store.close()


def choose_snapshot(
    repo: Repository,
    *,
    snapshot_id: str | None = None,
    at: datetime | None = None,
    device_id: int | None = None,
) -> Snapshot:
    """A snapshot by id (or prefix), else the latest of ``device_id`` (any device when None),
    at or before ``at`` when given."""
    if snapshot_id:
        try:
            return repo.get_snapshot(snapshot_id)
        except SnapshotNotFound as exc:
            raise NoBackups(str(exc)) from None
    snaps = [
        s
        for s in repo.list_snapshots()
        if (device_id is None or s.device == str(device_id)) and (at is None or s.time <= at)
    ]
    if not snaps:
        which = f"device {device_id}" if device_id is not None else "this user"
        when = f" at or before {at.isoformat()}" if at else ""
        raise NoBackups(f"no snapshot of {which}{when}")
    return snaps[-1]


def restore(
    enrollment: state.Enrollment,
    target: Path,
    *,
    snapshot_id: str | None = None,
    at: datetime | None = None,
    device_id: int | None = None,
    paths: list[str] | None = None,
) -> tuple[Snapshot, RestoreStats]:
    """Restore into ``target`` (the library never writes outside it)."""
    with (
        DeviceClient(enrollment.server, enrollment.device_token) as client,
        open_repository(client) as repo,
    ):
        snap = choose_snapshot(repo, snapshot_id=snapshot_id, at=at, device_id=device_id)
        stats = repo.restore(snap, target, paths or None)
    return snap, stats
