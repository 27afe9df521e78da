"""The agent's backup rules that need no server: what is selected, when the next backup is
due, one backup at a time, and the upload bandwidth cap."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleetkeep.agent.backups import BackupRunning, Schedule, backup_lock, upload_limit
from fleetkeep.agent.remote import UploadLimiter
from fleetkeep.agent.selection import DEFAULT_EXCLUDES, backup_selection


def test_without_folders_the_home_is_backed_up_with_the_platforms_default_excludes(
    tmp_path: Path,
) -> None:
    chosen = backup_selection({}, home=tmp_path, platform="macos", never=[tmp_path / "state"])
    assert chosen.paths == [str(tmp_path)]
    assert chosen.excludes == [*DEFAULT_EXCLUDES["macos"], str(tmp_path / "state")]


def test_policy_folders_expand_home_and_globs_and_skip_what_does_not_exist(
    tmp_path: Path,
) -> None:
    for name in ("Documents", "Projects/a", "Projects/b"):
        (tmp_path / name).mkdir(parents=True)
    policy = {
        "folders": ["~/Documents", "~/Projects/*", "~/Missing"],
        "exclude": ["*.iso"],
        "default_excludes": False,
    }
    chosen = backup_selection(policy, home=tmp_path, platform="linux")
    assert chosen.paths == [str(tmp_path / p) for p in ("Documents", "Projects/a", "Projects/b")]
    assert chosen.excludes == ["*.iso"]


def test_the_next_backup_is_due_an_interval_after_the_last_finish_sooner_after_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETKEEP_AGENT_DIR", str(tmp_path))
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert Schedule().due_in(timedelta(hours=4), now) == 0
    done = Schedule(last_finished_at=(now - timedelta(hours=1)).isoformat())
    assert done.due_in(timedelta(hours=4), now) == 3 * 3600
    failed = Schedule(last_finished_at=now.isoformat(), failures=3)
    assert failed.due_in(timedelta(hours=4), now) == 4 * 60
    failed.finished("abc", None)
    assert (Schedule.load().failures, Schedule.load().last_snapshot) == (0, "abc")


def test_only_one_backup_of_a_device_runs_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETKEEP_AGENT_DIR", str(tmp_path))
    # flock is per open file: a second open in the same process conflicts too.
    with backup_lock(), pytest.raises(BackupRunning), backup_lock():
        pass
    with backup_lock():
        pass


def test_the_upload_cap_spaces_uploads_to_the_configured_rate() -> None:
    assert upload_limit({}, None) is None
    limiter = upload_limit({"upload_limit_kbps": 1}, 2048)
    assert isinstance(limiter, UploadLimiter)
    assert limiter.rate == 2048 * 1024
    cap = UploadLimiter(1_000_000)
    started = time.monotonic()
    for _ in range(4):
        cap.take(250_000)
    assert time.monotonic() - started >= 0.7
