"""Periodic jobs: exactly once per interval across processes, never overlapping, crash-tolerant."""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
from datetime import timedelta

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.db import make_engine, make_sessionmaker
from fleetkeep.jobs.models import JobRun
from fleetkeep.jobs.scheduler import Job, Scheduler
from tests.support.servers import BIN, ServerProcess


def _runs(factory: sessionmaker[Session], name: str) -> list[JobRun]:
    with factory() as session:
        return list(
            session.scalars(select(JobRun).where(JobRun.name == name).order_by(JobRun.started_at))
        )


def test_two_job_processes_run_each_interval_exactly_once(server: ServerProcess) -> None:
    server.stop()  # keep only the two schedulers under test
    factory = make_sessionmaker(make_engine(server.database_url))
    earlier = {r.id for r in _runs(factory, "purge-deleted-users")}  # the server's own run
    env = {
        **server.env,
        "FLEETKEEP_JOB_INTERVALS": '{"purge-deleted-users": 1}',
        "FLEETKEEP_JOB_TICK_SECONDS": "0.1",
    }
    procs = [
        subprocess.Popen(
            [str(BIN / "fleetkeep"), "jobs"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]

    def ours() -> list[JobRun]:
        return [r for r in _runs(factory, "purge-deleted-users") if r.id not in earlier]

    deadline = time.monotonic() + 90  # generous: process start-up on a loaded machine
    while time.monotonic() < deadline:
        runs = ours()
        if len({r.holder for r in runs}) == 2 and len(runs) >= 6:
            break
        assert all(p.poll() is None for p in procs), "a job process died"
        time.sleep(0.5)
    for proc in procs:
        proc.terminate()
        proc.wait(10)
    runs = ours()
    assert len({r.holder for r in runs}) == 2, "both processes should have taken turns"
    starts = [r.started_at for r in runs]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.9, gaps  # never twice in one interval
    assert all(r.status == "ok" for r in runs if r.finished_at is not None)


def test_a_slow_job_never_overlaps_itself_across_schedulers(clean_engine: Engine) -> None:
    factory = make_sessionmaker(clean_engine)
    active = 0
    peak = 0
    lock = threading.Lock()

    def slow(_factory: sessionmaker[Session]) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(1.0)
        with lock:
            active -= 1

    # The lease is renewed every third of its length; 3 s tolerates a heavily loaded machine.
    job = Job("slow", timedelta(seconds=0.2), slow, lease=timedelta(seconds=3))
    schedulers = [Scheduler(factory, [job], tick=0.05) for _ in range(3)]
    for s in schedulers:
        s.start()
    time.sleep(4)
    for s in schedulers:
        s.stop()
    runs = _runs(factory, "slow")
    assert peak == 1
    assert len(runs) >= 2
    for a, b in itertools.pairwise(runs):
        assert a.finished_at is not None
        assert a.finished_at <= b.started_at


def test_a_failing_job_is_recorded_and_retried_next_interval(clean_engine: Engine) -> None:
    factory = make_sessionmaker(clean_engine)
    calls = []

    def flaky(_factory: sessionmaker[Session]) -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("disk on fire")

    scheduler = Scheduler(factory, [Job("flaky", timedelta(seconds=0.3), flaky)], tick=0.05)
    scheduler.start()
    deadline = time.monotonic() + 5
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    scheduler.stop()
    runs = _runs(factory, "flaky")
    assert runs[0].status == "failed"
    assert "disk on fire" in (runs[0].error or "")
    assert runs[1].status == "ok"
    assert runs[0].finished_at is not None
    assert runs[1].started_at >= runs[0].finished_at
