"""Re-backups through the local cache: unchanged directories reuse their trees, and any
change the cache could miss shows up in the restore."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetkeep.backup import Repository
from fleetkeep.backup.crypto import BlobType
from fleetkeep.backup.index import Index
from fleetkeep.backup.pack import pack_name
from tests.backup.trees import describe


def _tree(src: Path) -> None:
    for d in ("a", "a/deep", "b"):
        (src / d).mkdir(parents=True)
        for i in range(5):
            (src / d / f"f{i}").write_bytes(os.urandom(3000))
    (src / "b" / "link").symlink_to("f1")


def _round_trip(repo: Repository, src: Path, cache: Path, out: Path) -> dict[str, int]:
    snap = repo.backup([src], device="d", cache_dir=cache)
    repo.restore(snap, out)
    assert describe(out / src.relative_to("/")) == describe(src)
    return snap.stats


def test_unchanged_tree_is_reused_and_restores(repo: Repository, tmp_path: Path) -> None:
    src, cache = tmp_path / "src", tmp_path / "cache"
    _tree(src)
    repo.backup([src], device="d", cache_dir=cache)
    stats = _round_trip(repo, src, cache, tmp_path / "out")
    assert stats["files"] == 15
    assert stats["new_bytes"] < 2000  # only the directories above src (the cache is there)


@pytest.mark.parametrize(
    "change",
    [
        lambda src: (src / "a" / "deep" / "f2").write_bytes(b"new content"),
        lambda src: (src / "a" / "deep" / "f2").chmod(0o600),
        lambda src: os.utime(src / "a" / "f0", ns=(1, 1_000_000_000)),
        lambda src: (src / "a" / "deep" / "f9").write_bytes(b"added"),
        lambda src: (src / "b" / "f3").unlink(),
        lambda src: ((src / "b" / "link").unlink(), (src / "b" / "link").symlink_to("f4")),
        lambda src: (src / "a" / "deep").rename(src / "b" / "moved"),
    ],
    ids=["content", "mode", "mtime", "added", "removed", "relinked", "moved-dir"],
)
def test_changes_below_cached_directories_are_backed_up(
    repo: Repository, tmp_path: Path, change: object
) -> None:
    src, cache = tmp_path / "src", tmp_path / "cache"
    _tree(src)
    repo.backup([src], device="d", cache_dir=cache)
    change(src)  # type: ignore[operator]
    _round_trip(repo, src, cache, tmp_path / "out")


def test_xattr_added_to_an_unchanged_file_is_backed_up(repo: Repository, tmp_path: Path) -> None:
    src, cache = tmp_path / "src", tmp_path / "cache"
    _tree(src)
    repo.backup([src], device="d", cache_dir=cache)
    tagged = src / "a" / "deep" / "f1"
    try:
        os.setxattr(tagged, "user.fleetkeep", b"later")
    except OSError:
        pytest.skip("filesystem without user xattrs")
    snap = repo.backup([src], device="d", cache_dir=cache)
    repo.restore(snap, tmp_path / "out")
    restored = tmp_path / "out" / tagged.relative_to("/")
    assert os.getxattr(restored, "user.fleetkeep") == b"later"


def test_a_cached_tree_whose_data_is_gone_is_not_reused(repo: Repository, tmp_path: Path) -> None:
    src, cache = tmp_path / "src", tmp_path / "cache"
    _tree(src)
    repo.backup([src], device="d", cache_dir=cache)
    # The trees stay indexed while the data packs are gone, as after a prune of forgotten
    # snapshots that kept a sparse tree pack: the cache must not vouch for missing data.
    trees_only = Index()
    for pack_id, entries in repo.index.pack_entries.items():
        if all(e.blob_type == BlobType.TREE for e in entries):
            trees_only.add_pack(pack_id, entries)
        else:
            repo.store.delete(pack_name(pack_id))
    repo.index = trees_only
    stats = _round_trip(repo, src, cache, tmp_path / "out")
    assert stats["new_bytes"] >= 15 * 3000
