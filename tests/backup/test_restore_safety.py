"""A malicious or corrupt snapshot tree can never make restore write outside its target."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fleetkeep.backup import Repository, Snapshot, UnsafePath
from fleetkeep.backup.crypto import BlobType
from fleetkeep.backup.repository import BlobSink
from fleetkeep.backup.tree import Node, encode_tree


def _snapshot_of(repo: Repository, nodes: list[Node]) -> Snapshot:
    """Write a tree exactly as given (encode_tree does not validate), like an attacker with
    the key or a corrupting bug would."""
    sink = BlobSink(repo)
    payload = sink.store(BlobType.DATA, b"owned\n")
    for n in nodes:
        if n.type == "file":
            n.content, n.size = [payload], 6
    tree = sink.store(BlobType.TREE, encode_tree(nodes))
    sink.flush()
    snap = Snapshot("", datetime.now(UTC), "evil", "evil", ["/"], tree)
    return repo.save_snapshot(snap)


def _file(name: bytes) -> Node:
    return Node(name=name, type="file", mode=0o644, mtime_ns=0)


@pytest.mark.parametrize(
    "name", [b"..", b".", b"../escape", b"/tmp/escape", b"a/../../escape", b"", b"nul\0byte"]
)
def test_tree_names_that_are_not_one_component_are_rejected(
    repo: Repository, tmp_path: Path, name: bytes
) -> None:
    snap = _snapshot_of(repo, [_file(name)])
    target = tmp_path / "deep" / "target"
    with pytest.raises(UnsafePath):
        repo.restore(snap, target)
    written = {p.name for p in tmp_path.rglob("*")} - {"deep", "target", "repo"}
    assert not any("escape" in w or "owned" in w for w in written)
    assert not (tmp_path / "deep" / "escape").exists()


def test_duplicate_names_in_a_tree_are_rejected(repo: Repository, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    link = Node(name=b"x", type="symlink", mode=0o777, mtime_ns=0, target=str(outside).encode())
    snap = _snapshot_of(repo, [link, _file(b"x")])
    with pytest.raises(UnsafePath):
        repo.restore(snap, tmp_path / "target")
    assert list(outside.iterdir()) == []


def test_restoring_through_a_symlink_left_in_the_target_is_refused(
    repo: Repository, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    first = _snapshot_of(
        repo,
        [Node(name=b"d", type="symlink", mode=0o777, mtime_ns=0, target=str(outside).encode())],
    )
    repo.restore(first, target)
    assert os.readlink(target / "d") == str(outside)

    sink = BlobSink(repo)
    inner = sink.store(BlobType.TREE, encode_tree([_file(b"planted")]))
    sink.flush()
    second = _snapshot_of(
        repo, [Node(name=b"d", type="dir", mode=0o755, mtime_ns=0, subtree=inner)]
    )
    with pytest.raises(UnsafePath):
        repo.restore(second, target)
    assert list(outside.iterdir()) == []


def test_symlinks_are_restored_as_links_not_followed(repo: Repository, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("keep")
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside / "secret", target / "f")  # a link planted where a file will go
    snap = _snapshot_of(repo, [_file(b"f")])
    repo.restore(snap, target)
    assert (outside / "secret").read_text() == "keep"
    assert not (target / "f").is_symlink()
    assert (target / "f").read_text() == "owned\n"
