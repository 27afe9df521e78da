"""A backup killed at any moment leaves a consistent repository; the next one completes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from fleetkeep.backup import Repository
from fleetkeep.backup.stores import FilesystemStore
from tests.backup.conftest import SMALL_CHUNKS
from tests.backup.trees import describe

_BACKUP = """
import sys
from fleetkeep.backup import Repository
from fleetkeep.backup.stores import FilesystemStore
repo = Repository.open(FilesystemStore(sys.argv[1]), bytes.fromhex(sys.argv[2]))
print("ready", flush=True)
repo.backup([sys.argv[3]], device="crashy", cache_dir=sys.argv[4])
print("done", flush=True)
"""


def test_sigkill_at_random_points_leaves_repository_consistent(tmp_path: Path) -> None:
    rng = random.Random(8)
    src = tmp_path / "src"
    for d in range(6):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(15):
            size = rng.choice([100, 5000, 200_000])
            (src / f"d{d}" / f"f{f}").write_bytes(rng.randbytes(size))
    dek = os.urandom(32)
    store = FilesystemStore(tmp_path / "repo")
    Repository.init(store, dek, chunker=SMALL_CHUNKS, pack_target=128 * 1024)
    args = [str(store.root), dek.hex(), str(src), str(tmp_path / "cache")]
    for round_no in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", _BACKUP, *args], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()

        repo = Repository.open(store, dek)
        report = repo.check(read_data=True)
        assert report.ok, (round_no, report.damage)
        (src / f"d{round_no}" / "f0").write_bytes(rng.randbytes(50_000))

    uploaded_before = sum(1 for _ in store.list("packs/"))
    snap = Repository.open(store, dek).backup([src], device="crashy", cache_dir=tmp_path / "cache")
    repo = Repository.open(store, dek)
    assert repo.check(read_data=True).ok
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    if uploaded_before:  # whatever the killed runs uploaded is adopted, not sent again
        assert snap.stats["new_bytes"] < total
    repo.restore(snap, tmp_path / "out")
    assert describe(tmp_path / "out" / src.relative_to("/")) == describe(src)
