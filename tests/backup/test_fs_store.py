"""The filesystem store: whole objects appear at once, whatever way their bytes were written
(O_DIRECT for a pack's page-aligned blobs, buffered writes otherwise or where refused)."""

from __future__ import annotations

import mmap
import os
import shutil
from pathlib import Path

import pytest

from fleetkeep.backup import ObjectNotFound
from fleetkeep.backup.stores import FilesystemStore, InvalidName


def _pack_like(size: int) -> tuple[mmap.mmap, memoryview]:
    buf = mmap.mmap(-1, size + mmap.PAGESIZE, mmap.MAP_PRIVATE)
    view = memoryview(buf)
    view[:size] = os.urandom(size)
    return buf, view


def test_store_contract(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    store.put("packs/ab/abcd", b"0123456789")
    assert store.get("packs/ab/abcd") == b"0123456789"
    assert store.get_range("packs/ab/abcd", -4, 4) == b"6789"
    assert [o.name for o in store.list("packs/")] == ["packs/ab/abcd"]
    store.delete("packs/ab/abcd")
    with pytest.raises(ObjectNotFound):
        store.get("packs/ab/abcd")
    with pytest.raises(InvalidName):
        store.put("../escape", b"x")


# An aligned size, a size that leaves an unaligned tail, and a view that does not start on a
# page (O_DIRECT refuses it: the store must fall back, not fail or write garbage).
@pytest.mark.parametrize(
    ("size", "skip"), [(2 * 1024 * 1024, 0), (3 * 1024 * 1024 + 777, 0), (1_500_001, 1)]
)
def test_put_parts_of_a_pack_buffer(tmp_path: Path, size: int, skip: int) -> None:
    store = FilesystemStore(tmp_path)
    buf, view = _pack_like(size + skip)
    blobs = view[skip : skip + size]
    parts = [blobs, b"sealed header", (13).to_bytes(4, "little")]
    store.put_parts("packs/00/p", parts)
    assert store.get("packs/00/p") == b"".join(bytes(p) for p in parts)
    assert not [p for p in (tmp_path / "packs" / "00").iterdir() if p.name.startswith(".tmp-")]
    del blobs, view, parts
    buf.close()


def test_put_parts_where_o_direct_is_refused() -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable tmpfs at /dev/shm")
    root = shm / f"fk-test-{os.getpid()}"
    store = FilesystemStore(root)
    buf, view = _pack_like(2 * 1024 * 1024)
    try:
        store.put_parts("packs/00/p", [view[: 2 * 1024 * 1024], b"tail"])
        assert store.get("packs/00/p") == bytes(view[: 2 * 1024 * 1024]) + b"tail"
    finally:
        del view
        buf.close()
        shutil.rmtree(root, ignore_errors=True)
