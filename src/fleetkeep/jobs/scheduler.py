"""Runs registered periodic jobs; any number of processes may run a scheduler.

Coordination is a conditional UPDATE on the job's lease row, which works the same on SQLite
and PostgreSQL: the process whose UPDATE matches (lease free, last start an interval ago) owns
the run and stamps ``last_started_at``, so each interval's run happens exactly once. The
holder renews the lease while the job runs, so a job never overlaps itself; if the holder
dies, the lease expires and another process takes the next interval.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.db import transaction, utcnow
from fleetkeep.jobs.models import JobLease, JobRun

log = logging.getLogger("fleetkeep.jobs")

JobFunc = Callable[[sessionmaker[Session]], None]


@dataclass(frozen=True)
class Job:
    name: str
    interval: timedelta
    run: JobFunc
    lease: timedelta = timedelta(minutes=5)


class Scheduler:
    def __init__(self, factory: sessionmaker[Session], jobs: list[Job], tick: float = 1.0) -> None:
        self.factory = factory
        self.jobs = {job.name: job for job in jobs}
        self.tick = tick
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._ensure_rows()
        self._thread = threading.Thread(target=self.run_forever, name="fleetkeep-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_forever(self) -> None:
        self._ensure_rows()
        while not self._stop.is_set():
            try:
                self.run_due()
            except Exception:
                log.exception("scheduler tick failed")
            self._stop.wait(self.tick)

    def run_due(self) -> list[str]:
        """Run every job that is due and whose lease this process wins; returns their names."""
        ran = []
        for job in self.jobs.values():
            if self._stop.is_set():
                break
            if self._acquire(job):
                self._execute(job)
                ran.append(job.name)
        return ran

    def _ensure_rows(self) -> None:
        for name in self.jobs:
            try:
                with transaction(self.factory) as session:
                    if session.get(JobLease, name) is None:
                        session.add(JobLease(name=name))
            except IntegrityError:
                pass  # another process created it first

    def _acquire(self, job: Job) -> bool:
        now = utcnow()
        with transaction(self.factory) as session:
            result = session.execute(
                update(JobLease)
                .where(
                    JobLease.name == job.name,
                    JobLease.last_started_at.is_(None)
                    | (JobLease.last_started_at <= now - job.interval),
                    JobLease.leased_until.is_(None) | (JobLease.leased_until < now),
                )
                .values(holder=self.holder, leased_until=now + job.lease, last_started_at=now)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def _execute(self, job: Job) -> None:
        with transaction(self.factory) as session:
            run = JobRun(name=job.name, holder=self.holder, started_at=utcnow())
            session.add(run)
            session.flush()
            run_id = run.id
        done = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(job, done), daemon=True)
        renewer.start()
        status, error = "ok", None
        try:
            job.run(self.factory)
        except Exception:
            status, error = "failed", traceback.format_exc(limit=20)
            log.exception("job failed", extra={"job": job.name})
        finally:
            done.set()
            renewer.join()
            with transaction(self.factory) as session:
                session.execute(
                    update(JobRun)
                    .where(JobRun.id == run_id)
                    .values(finished_at=utcnow(), status=status, error=error)
                )
                session.execute(
                    update(JobLease)
                    .where(JobLease.name == job.name, JobLease.holder == self.holder)
                    .values(leased_until=None, holder=None)
                )

    def _renew(self, job: Job, done: threading.Event) -> None:
        every = max(job.lease.total_seconds() / 3, 0.5)
        while not done.wait(every):
            with transaction(self.factory) as session:
                session.execute(
                    update(JobLease)
                    .where(JobLease.name == job.name, JobLease.holder == self.holder)
                    .values(leased_until=utcnow() + job.lease)
                )


def job_status(session: Session) -> list[tuple[JobLease, JobRun | None]]:
    rows = []
    for lease in session.scalars(select(JobLease).order_by(JobLease.name)):
        last = session.scalar(
            select(JobRun).where(JobRun.name == lease.name).order_by(JobRun.id.desc()).limit(1)
        )
        rows.append((lease, last))
    return rows


def runs_between(session: Session, name: str, start: datetime, end: datetime) -> list[JobRun]:
    return list(
        session.scalars(
            select(JobRun)
            .where(JobRun.name == name, JobRun.started_at >= start, JobRun.started_at <= end)
            .order_by(JobRun.started_at)
        )
    )
