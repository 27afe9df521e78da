"""Which snapshots a retention policy keeps: pure calendar arithmetic, no I/O.

Per device: the latest snapshot always; the last snapshot of each calendar day within the last
``daily`` days, of each ISO week within the last ``weekly`` weeks, and of each month within
the last ``monthly`` months (all in UTC, counting the current day/week/month as the first;
snapshots dated in the future are kept).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from fleetkeep.backup.errors import BackupError
from fleetkeep.backup.repository import Snapshot


@dataclass(frozen=True)
class RetentionPolicy:
    daily: int = 7
    weekly: int = 4
    monthly: int = 12

    def __post_init__(self) -> None:
        if min(self.daily, self.weekly, self.monthly) < 0:
            raise BackupError("retention counts cannot be negative", code="invalid_retention")


def _monday(d: date) -> date:
    return d - timedelta(days=d.weekday())


def _last_per_bucket(
    snaps: list[Snapshot], bucket: Callable[[date], Hashable], in_window: Callable[[date], bool]
) -> set[str]:
    latest: dict[Hashable, Snapshot] = {}
    for s in snaps:
        day = s.time.astimezone(UTC).date()
        if in_window(day):
            key = bucket(day)
            if key not in latest or s.time > latest[key].time:
                latest[key] = s
    return {s.id for s in latest.values()}


def snapshots_to_keep(
    snapshots: Iterable[Snapshot], policy: RetentionPolicy, now: datetime
) -> set[str]:
    today = now.astimezone(UTC).date()
    month = today.year * 12 + today.month
    by_device: dict[str, list[Snapshot]] = {}
    for s in snapshots:
        by_device.setdefault(s.device, []).append(s)
    keep: set[str] = set()
    for snaps in by_device.values():
        keep.add(max(snaps, key=lambda s: s.time).id)
        keep |= _last_per_bucket(snaps, lambda d: d, lambda d: (today - d).days < policy.daily)
        keep |= _last_per_bucket(
            snaps,
            lambda d: d.isocalendar()[:2],
            lambda d: (_monday(today) - _monday(d)).days // 7 < policy.weekly,
        )
        keep |= _last_per_bucket(
            snaps,
            lambda d: (d.year, d.month),
            lambda d: month - (d.year * 12 + d.month) < policy.monthly,
        )
    return keep
