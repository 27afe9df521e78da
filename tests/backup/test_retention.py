"""Retention: daily, weekly (ISO), monthly windows per device, plus each device's latest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleetkeep.backup import BackupError, Snapshot
from fleetkeep.backup.retention import RetentionPolicy, snapshots_to_keep

NOW = datetime(2026, 3, 18, 12, 0, tzinfo=UTC)  # a Wednesday, ISO week 12


def _snap(when: datetime, device: str = "laptop") -> Snapshot:
    return Snapshot(f"{device}-{when:%Y%m%dT%H%M}", when, device, device, ["/"], b"\0" * 32)


def _keep(snaps: list[Snapshot], **policy: int) -> set[str]:
    return snapshots_to_keep(snaps, RetentionPolicy(**policy), NOW)


def test_daily_keeps_last_snapshot_of_each_of_the_last_n_days() -> None:
    snaps = [_snap(NOW - timedelta(days=d, hours=h)) for d in range(5) for h in (1, 5)]
    kept = _keep(snaps, daily=3, weekly=0, monthly=0)
    assert kept == {
        "laptop-20260318T1100",  # today, the later of 11:00 and 07:00
        "laptop-20260317T1100",
        "laptop-20260316T1100",
    }


def test_weekly_keeps_last_snapshot_of_each_iso_week() -> None:
    snaps = [
        _snap(datetime(2026, 3, 2, 9, tzinfo=UTC)),  # Mon, week 10
        _snap(datetime(2026, 3, 8, 23, tzinfo=UTC)),  # Sun, week 10: last of its week
        _snap(datetime(2026, 3, 9, 9, tzinfo=UTC)),  # Mon, week 11
        _snap(datetime(2026, 3, 12, 9, tzinfo=UTC)),  # Thu, week 11: last of its week
        _snap(datetime(2026, 2, 25, 9, tzinfo=UTC)),  # week 9: outside 3 weeks
        _snap(datetime(2026, 3, 17, 9, tzinfo=UTC)),  # Tue, week 12 (this week)
    ]
    kept = _keep(snaps, daily=0, weekly=3, monthly=0)
    assert kept == {"laptop-20260308T2300", "laptop-20260312T0900", "laptop-20260317T0900"}


def test_iso_week_spanning_new_year() -> None:
    now = datetime(2027, 1, 2, tzinfo=UTC)  # Saturday of ISO week 53 of 2026
    snaps = [_snap(datetime(2026, 12, 28, tzinfo=UTC)), _snap(datetime(2027, 1, 1, tzinfo=UTC))]
    kept = snapshots_to_keep(snaps, RetentionPolicy(daily=0, weekly=1, monthly=0), now)
    assert kept == {"laptop-20270101T0000"}


def test_monthly_keeps_last_of_each_month_and_latest_is_always_kept() -> None:
    snaps = [
        _snap(datetime(2025, 11, 30, tzinfo=UTC)),
        _snap(datetime(2026, 1, 5, tzinfo=UTC)),
        _snap(datetime(2026, 1, 31, tzinfo=UTC)),
        _snap(datetime(2026, 2, 14, tzinfo=UTC)),
        _snap(datetime(2026, 3, 1, tzinfo=UTC)),
    ]
    kept = _keep(snaps, daily=0, weekly=0, monthly=3)
    assert kept == {"laptop-20260131T0000", "laptop-20260214T0000", "laptop-20260301T0000"}
    assert _keep(snaps, daily=0, weekly=0, monthly=0) == {"laptop-20260301T0000"}


def test_each_device_keeps_its_own_latest() -> None:
    old = datetime(2020, 1, 1, tzinfo=UTC)
    snaps = [_snap(old, "desk"), _snap(old - timedelta(days=1), "desk"), _snap(NOW, "laptop")]
    assert _keep(snaps, daily=1, weekly=0, monthly=0) == {
        "desk-20200101T0000",
        "laptop-20260318T1200",
    }


def test_negative_counts_are_rejected() -> None:
    with pytest.raises(BackupError):
        RetentionPolicy(daily=-1)
