"""SIGKILL the agent, and separately the server, at random points of a backup; after a
restart the repository checks clean, nothing half-made is visible, and the next backup
completes without sending the data again."""

from __future__ import annotations

import random
import signal
import subprocess
from pathlib import Path

from fleetkeep.backup import Repository
from fleetkeep.backup.stores import FilesystemStore
from tests.backup.trees import describe
from tests.support.servers import ServerProcess
from tests.support.waits import wait_for
from tests.vault.agents import (
    new_agent,
    random_tree,
    restart,
    setup_org,
    small_pack_repository,
)

SEED = 8


def _packs(store: FilesystemStore) -> int:
    return sum(1 for _ in store.list("packs/"))


def _wait_packs(store: FilesystemStore, goal: int, running: subprocess.Popen[str]) -> None:
    wait_for(lambda: _packs(store) >= goal or running.poll() is not None, f"{goal} packs")


def _check_and_restore(store: FilesystemStore, dek: bytes, src: Path, out: Path) -> None:
    repo = Repository.open(store, dek)
    report = repo.check(read_data=True)
    assert report.ok, report
    latest = repo.list_snapshots()[-1]
    repo.restore(latest, out)
    assert describe(out / src.relative_to("/")) == describe(src)


def test_agent_killed_at_random_points_then_the_next_backup_completes(
    server: ServerProcess, tmp_path: Path
) -> None:
    org = setup_org(server, f"file://{tmp_path / 'blobs'}")
    user = org.user("ann@example.com")
    ann = new_agent(tmp_path, server, org, "ann@example.com", "ANN-PC")
    store = FilesystemStore(tmp_path / "blobs" / "users" / str(user))
    dek = small_pack_repository(server, ann, store)
    random_tree(ann.home, files=12, size=300_000, seed=SEED)
    rng = random.Random(SEED)
    for _ in range(3):
        before = _packs(store)
        running = ann.popen("backup", "--quiet")
        goal = before + rng.randint(1, 4)
        _wait_packs(store, goal, running)
        running.send_signal(signal.SIGKILL)
        running.wait(10)
        assert not list(store.list("snapshots/")), "a killed backup committed a snapshot"
    sent_before = sum(o.size for o in store.list("packs/"))
    done = ann.ok("backup", "--quiet")
    assert "snapshot" in done
    sent_after = sum(o.size for o in store.list("packs/"))
    assert sent_after - sent_before < 4_000_000  # what the killed runs sent was reused
    _check_and_restore(store, dek, ann.home, tmp_path / "out")
    states = [s["state"] for s in org.admin.get("/api/v1/backup-sessions").json()["items"]]
    assert states[0] == "committed"
    assert set(states[1:]) == {"abandoned"}


def test_server_killed_at_random_points_then_the_backup_rides_through_the_restart(
    server: ServerProcess, tmp_path: Path
) -> None:
    org = setup_org(server, f"file://{tmp_path / 'blobs'}")
    user = org.user("ann@example.com")
    # Retries long enough to outlast a server restart (a few seconds).
    ann = new_agent(
        tmp_path,
        server,
        org,
        "ann@example.com",
        "ANN-PC",
        FLEETKEEP_AGENT_RETRY_ATTEMPTS="200",
        FLEETKEEP_AGENT_RETRY_CAP="0.3",
    )
    store = FilesystemStore(tmp_path / "blobs" / "users" / str(user))
    dek = small_pack_repository(server, ann, store)
    random_tree(ann.home, files=12, size=300_000, seed=SEED)
    rng = random.Random(SEED + 1)
    for round_ in range(2):
        if round_:
            (ann.home / "Documents" / "later.bin").write_bytes(rng.randbytes(1_500_000))
        before = _packs(store)
        running = ann.popen("backup", "--quiet")
        goal = before + rng.randint(1, 3)
        _wait_packs(store, goal, running)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
        restart(server)
        assert running.wait(120) == 0, running.communicate()
    _check_and_restore(store, dek, ann.home, tmp_path / "out")
    assert "snapshot" in ann.ok("backup", "--quiet")
    listed = org.admin.get("/api/v1/snapshots").json()["items"]
    assert len(listed) == len(list(store.list("snapshots/"))) == 3
