"""Backup → restore gives back the same tree: bytes, modes, mtimes, symlinks, sparse files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetkeep.backup import Repository, SnapshotNotFound
from fleetkeep.backup.stores import FilesystemStore
from tests.backup.conftest import SMALL_CHUNKS, SMALL_PACKS
from tests.backup.trees import describe

_names = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="/\0"),
    min_size=1,
    max_size=12,
).filter(lambda n: n not in (".", "..") and len(n.encode()) < 200)

_file = st.one_of(
    st.binary(max_size=0),
    st.binary(min_size=1, max_size=3000),
    st.integers(min_value=20_000, max_value=200_000).map(lambda n: ("random", n)),
    st.integers(min_value=1, max_value=4_000_000).map(lambda n: ("sparse", n)),
)
_tree = st.recursive(
    st.dictionaries(_names, _file, max_size=4),
    lambda children: st.dictionaries(
        _names, st.one_of(_file, children, _names.map(lambda t: ("link", t))), max_size=4
    ),
    max_leaves=12,
)


def _materialize(root: Path, spec: dict[str, Any], seed: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i, (name, value) in enumerate(sorted(spec.items())):
        path = root / name
        if isinstance(value, dict):
            _materialize(path, value, seed + i)
            os.chmod(path, 0o700)
        elif isinstance(value, bytes):
            path.write_bytes(value)
            os.chmod(path, 0o640 if i % 2 else 0o755)
        elif value[0] == "random":
            path.write_bytes(os.urandom(int(value[1])))
        elif value[0] == "sparse":
            with path.open("wb") as f:
                f.truncate(int(value[1]))
                f.seek(int(value[1]) // 2)
                f.write(b"island")
        else:
            os.symlink(str(value[1]), path)
            continue
        os.utime(path, ns=(1_600_000_000_123_456_789 + seed * 1000 + i,) * 2, follow_symlinks=False)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(spec=_tree)
def test_random_trees_round_trip_byte_identical(tmp_path: Path, spec: dict[str, Any]) -> None:
    work = tmp_path / "case"
    shutil.rmtree(work, ignore_errors=True)
    src = work / "src"
    _materialize(src, spec, 0)
    os.utime(src, ns=(1_500_000_000_000_000_000,) * 2)
    dek = os.urandom(32)
    repo = Repository.init(
        FilesystemStore(work / "repo"), dek, chunker=SMALL_CHUNKS, pack_target=SMALL_PACKS
    )
    snap = repo.backup([src], device="laptop")

    reopened = Repository.open(FilesystemStore(work / "repo"), dek)
    reopened.restore(snap.id, work / "out")

    restored = work / "out" / src.relative_to("/")
    assert describe(restored) == describe(src)
    assert restored.stat().st_mtime_ns == src.stat().st_mtime_ns


def test_sparse_file_restores_sparse(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = src / "disk.img"
    with big.open("wb") as f:
        f.truncate(512 * 1024 * 1024)
        f.write(b"boot sector")
    snap = repo.backup([src], device="d")
    repo.restore(snap, tmp_path / "out")

    out = tmp_path / "out" / big.relative_to("/")
    assert out.stat().st_size == big.stat().st_size
    assert out.stat().st_blocks * 512 < 4 * 1024 * 1024
    with out.open("rb") as f:
        assert f.read(11) == b"boot sector"


def test_include_paths_restore_only_those(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "keep").mkdir(parents=True)
    (src / "skip").mkdir()
    (src / "keep" / "a.txt").write_text("a")
    (src / "skip" / "b.txt").write_text("b")
    snap = repo.backup([src], device="d")

    repo.restore(snap, tmp_path / "out", include_paths=[str(src / "keep")])

    out = tmp_path / "out" / src.relative_to("/")
    assert (out / "keep" / "a.txt").read_text() == "a"
    assert not (out / "skip").exists()


def test_excludes_leave_matching_files_out(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "report.txt").write_text("keep")
    (src / "scratch.tmp").write_text("drop")
    snap = repo.backup([src], device="d", excludes=["*.tmp"])

    repo.restore(snap, tmp_path / "out")

    out = tmp_path / "out" / src.relative_to("/")
    assert sorted(p.name for p in out.iterdir()) == ["report.txt"]


def test_xattrs_round_trip(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    f = src / "tagged"
    f.write_text("x")
    try:
        os.setxattr(f, "user.fleetkeep", b"\x00\xffvalue")
    except OSError:
        pytest.skip("filesystem without user xattrs")
    snap = repo.backup([src], device="d")
    repo.restore(snap, tmp_path / "out")
    out = tmp_path / "out" / f.relative_to("/")
    assert os.getxattr(out, "user.fleetkeep") == b"\x00\xffvalue"


def test_unchanged_rebackup_reads_no_file(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(10_000))
    cache = tmp_path / "cache"
    repo.backup([src], device="d", cache_dir=cache)

    second = repo.backup([src], device="d", cache_dir=cache)

    assert second.stats["files"] == 20
    assert second.stats["new_bytes"] < 2000  # only directory trees above src may change


def test_changed_file_is_reread_despite_cache(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    f = src / "doc"
    f.write_bytes(b"one" * 1000)
    cache = tmp_path / "cache"
    repo.backup([src], device="d", cache_dir=cache)
    f.write_bytes(b"two" * 1000)

    snap = repo.backup([src], device="d", cache_dir=cache)
    repo.restore(snap, tmp_path / "out")

    assert (tmp_path / "out" / f.relative_to("/")).read_bytes() == b"two" * 1000


def test_local_object_cache_serves_index_and_snapshots_and_survives_damage(
    repo: Repository, store: FilesystemStore, dek: bytes, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a" * 5000)
    cache = tmp_path / "cache"
    first = Repository.open(store, dek, cache_dir=cache).backup([src], device="d")
    opened = Repository.open(store, dek, cache_dir=cache)
    assert [s.id for s in opened.list_snapshots()] == [first.id]
    cached = cache / opened.config.repository_id
    copies = [*(cached / "index").iterdir(), *(cached / "snapshots").iterdir()]
    assert len(copies) == 2
    for p in copies:
        p.write_bytes(b"garbage")
    again = Repository.open(store, dek, cache_dir=cache)
    assert [s.id for s in again.list_snapshots()] == [first.id]
    again.restore(first, tmp_path / "out")
    assert (tmp_path / "out" / src.relative_to("/") / "a").read_text() == "a" * 5000


def test_progress_is_reported_and_snapshots_are_found_by_prefix(
    repo: Repository, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(50_000))
    seen: list[tuple[int, int, bool]] = []
    snap = repo.backup(
        [src], device="d", progress_cb=lambda p: seen.append((p.files, p.bytes, p.done))
    )
    assert seen[-1] == (1, 50_000, True)
    assert repo.get_snapshot(snap.id[:8]).tree == snap.tree
    with pytest.raises(SnapshotNotFound):
        repo.get_snapshot("0000ffff")
