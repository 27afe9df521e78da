"""forget + prune: space comes back, kept snapshots still restore, concurrent backups survive."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fleetkeep.backup import Repository
from fleetkeep.backup.retention import RetentionPolicy
from fleetkeep.backup.stores import FilesystemStore
from tests.backup.trees import describe


def _tree(root: Path, seed: int, files: int = 30) -> None:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"f{seed}-{i}").write_bytes(rng.randbytes(rng.choice([3000, 60_000])))


def _size(store: FilesystemStore) -> int:
    return sum(o.size for o in store.list("packs/"))


def test_prune_reclaims_space_and_kept_snapshot_still_restores(
    repo: Repository, store: FilesystemStore, dek: bytes, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    _tree(src / "old", 1)
    _tree(src / "stays", 2)
    first = repo.backup([src], device="d")
    for p in (src / "old").iterdir():
        p.unlink()
    (src / "old").rmdir()
    second = repo.backup([src], device="d")
    before = _size(store)

    gone = repo.forget(RetentionPolicy(daily=0, weekly=0, monthly=0))
    report = Repository.open(store, dek).prune(grace=timedelta(0))

    assert [s.id for s in gone] == [first.id]
    assert report.packs_deleted > 0
    assert _size(store) < before * 0.6
    reopened = Repository.open(store, dek)
    assert reopened.check(read_data=True).ok
    reopened.restore(second.id, tmp_path / "out")
    assert describe(tmp_path / "out" / src.relative_to("/")) == describe(src)


def test_sparse_packs_are_repacked_and_stay_readable(
    repo: Repository, store: FilesystemStore, dek: bytes, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    _tree(src, 3, files=60)
    first = repo.backup([src], device="d")
    for i, p in enumerate(sorted(src.iterdir())):
        if i % 3 == 0:
            p.unlink()
    second = repo.backup([src], device="d")
    repo.store.delete(f"snapshots/{first.id}")

    report = Repository.open(store, dek).prune(grace=timedelta(0), repack_threshold=0.1)

    assert report.packs_repacked > 0
    assert report.packs_written > 0
    reopened = Repository.open(store, dek)
    assert reopened.check(read_data=True).ok
    reopened.restore(second.id, tmp_path / "out")
    assert describe(tmp_path / "out" / src.relative_to("/")) == describe(src)
    assert [o.name for o in store.list("pending/")] == []


def test_backup_running_across_a_prune_keeps_its_data(
    repo: Repository, store: FilesystemStore, dek: bytes, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    _tree(src, 4)
    first = repo.backup([src], device="d")
    # A backup on another device opens the repository (loads the index) before prune runs.
    concurrent = Repository.open(store, dek)
    repo.store.delete(f"snapshots/{first.id}")
    t0 = datetime.now(UTC)
    marked = Repository.open(store, dek).prune(grace=timedelta(hours=1), now=t0)
    assert marked.pending
    assert marked.packs_deleted == 0

    # It deduplicates against the marked packs and writes its snapshot afterwards.
    late = concurrent.backup([src], device="other")
    assert late.stats["new_bytes"] < 10_000

    swept = Repository.open(store, dek).prune(grace=timedelta(hours=1), now=t0 + timedelta(hours=2))
    assert swept.packs_resurrected > 0
    reopened = Repository.open(store, dek)
    assert reopened.check(read_data=True).ok
    reopened.restore(late.id, tmp_path / "out")
    assert describe(tmp_path / "out" / src.relative_to("/")) == describe(src)


def test_prune_with_nothing_to_do_changes_nothing(
    repo: Repository, store: FilesystemStore, dek: bytes, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    _tree(src, 5, files=5)
    repo.backup([src], device="d")
    names = sorted(o.name for o in store.list(""))
    Repository.open(store, dek).prune(grace=timedelta(0))
    assert sorted(o.name for o in store.list("")) == names
    os.sync()
