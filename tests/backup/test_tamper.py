"""Any change to a stored object is an authentication error, never wrong data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetkeep.backup import IntegrityError, Repository, WrongKey
from fleetkeep.backup.crypto import BlobType, Crypto
from fleetkeep.backup.index import Index
from fleetkeep.backup.pack import PackEntry
from fleetkeep.backup.stores import FilesystemStore
from fleetkeep.keys.subkeys import derive_subkeys


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def backed_up(repo: Repository, tmp_path: Path) -> tuple[Repository, Path, str]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(100_000))
    (src / "b").write_text("text " * 5000)
    snap = repo.backup([src], device="d")
    return repo, src, snap.id


def _files(root: Path, folder: str) -> list[Path]:
    return sorted(p for p in (root / folder).rglob("*") if p.is_file())


def test_flipped_byte_in_any_blob_fails_restore_and_check(
    backed_up: tuple[Repository, Path, str], store: FilesystemStore, dek: bytes, tmp_path: Path
) -> None:
    repo, _, snap_id = backed_up
    assert len(repo.index.pack_entries) > 1
    for i, (pack_id, entries) in enumerate(repo.index.pack_entries.items()):
        pack = store.root / "packs" / pack_id[:2] / pack_id
        original = pack.read_bytes()
        target = entries[i % len(entries)]
        _flip(pack, target.offset + target.length // 2)
        reopened = Repository.open(store, dek)
        with pytest.raises(IntegrityError):
            reopened.restore(snap_id, tmp_path / f"out{i}")
        report = reopened.check(read_data=True)
        assert any(d.pack == pack_id and d.blob == target.blob_id.hex() for d in report.damage)
        pack.write_bytes(original)
    assert Repository.open(store, dek).check(read_data=True).ok


def test_flipped_byte_in_a_pack_header_is_reported(
    backed_up: tuple[Repository, Path, str], store: FilesystemStore, dek: bytes
) -> None:
    pack = _files(store.root, "packs")[0]
    _flip(pack, len(pack.read_bytes()) - 10)
    report = Repository.open(store, dek).check(read_data=True)
    kinds = {d.kind for d in report.damage if d.pack == pack.name}
    assert {"pack_hash_mismatch", "bad_pack_header"} <= kinds


def test_check_names_snapshot_file_and_pack_of_a_damaged_blob(
    backed_up: tuple[Repository, Path, str], store: FilesystemStore, dek: bytes
) -> None:
    repo, src, snap_id = backed_up
    content = next(
        n
        for n in repo.read_tree(_find_dir(repo, repo.get_snapshot(snap_id).tree, src))
        if n.name == b"a"
    ).content
    loc = repo.index.get(content[0])
    assert loc is not None
    _flip(store.root / "packs" / loc.pack_id[:2] / loc.pack_id, loc.offset + 20)

    report = Repository.open(store, dek).check(read_data=True)

    bad = [d for d in report.damage if d.path is not None]
    assert bad[0].snapshot == snap_id
    assert bad[0].path == f"{src}/a"
    assert bad[0].pack == loc.pack_id
    assert bad[0].blob == content[0].hex()


def _find_dir(repo: Repository, tree: bytes, path: Path) -> bytes:
    for part in path.parts[1:]:
        node = next(n for n in repo.read_tree(tree) if n.name == part.encode())
        assert node.subtree is not None
        tree = node.subtree
    return tree


def test_blob_moved_to_another_blobs_place_is_rejected(
    backed_up: tuple[Repository, Path, str], dek: bytes
) -> None:
    repo, _, _ = backed_up
    entries = [
        e
        for entries in repo.index.pack_entries.values()
        for e in entries
        if e.blob_type == BlobType.DATA
    ]
    a, b = entries[0], entries[1]
    loc_b = repo.index.get(b.blob_id)
    assert loc_b is not None
    swapped = Index()
    swapped.add_pack(loc_b.pack_id, [PackEntry(BlobType.DATA, a.blob_id, b.offset, b.length)])
    repo.index = swapped
    with pytest.raises(IntegrityError, match="failed authentication"):
        repo.read_blob(a.blob_id)


def test_tampered_index_snapshot_and_config_are_refused(
    backed_up: tuple[Repository, Path, str], store: FilesystemStore, dek: bytes
) -> None:
    index = _files(store.root, "index")[0]
    original = index.read_bytes()
    _flip(index, 40)
    with pytest.raises(IntegrityError):
        Repository.open(store, dek)
    index.write_bytes(original)

    snapshot = _files(store.root, "snapshots")[0]
    _flip(snapshot, 40)
    with pytest.raises(IntegrityError):
        Repository.open(store, dek).list_snapshots()

    config = store.root / "config"
    text = config.read_text()
    config.write_text(text.replace(text[-20:-16], "AAAA"))
    with pytest.raises(WrongKey):
        Repository.open(store, dek)


def test_wrong_key_is_refused(
    backed_up: tuple[Repository, Path, str], store: FilesystemStore
) -> None:
    with pytest.raises(WrongKey):
        Repository.open(store, os.urandom(32))


def test_chunk_ids_depend_on_the_key() -> None:
    a = Crypto(derive_subkeys(os.urandom(32)))
    b = Crypto(derive_subkeys(os.urandom(32)))
    assert a.blob_id(b"same chunk") != b.blob_id(b"same chunk")


def test_incompressible_chunks_are_stored_raw_and_text_is_compressed() -> None:
    from fleetkeep.backup.crypto import STORED, ZSTD, compress, decompress

    # Both ways of deciding: a whole small chunk, and a large one judged by a sample.
    for size in (200_000, 1_500_000):
        noise = os.urandom(size)
        text = (b"the same sentence again " * (size // 24 + 1))[:size]
        mode, payload = compress(noise)
        assert mode == STORED
        assert decompress(mode, bytes(payload)) == noise
        mode, payload = compress(text)
        assert mode == ZSTD
        assert len(payload) < len(text) // 20
        assert decompress(mode, bytes(payload)) == text


def test_storage_mode_byte_is_authenticated(
    backed_up: tuple[Repository, Path, str], store: FilesystemStore, dek: bytes
) -> None:
    repo, _, _ = backed_up
    blob_id = next(iter(repo.index.pack_entries.values()))[0].blob_id
    loc = repo.index.get(blob_id)
    assert loc is not None
    _flip(store.root / "packs" / loc.pack_id[:2] / loc.pack_id, loc.offset)  # 0 <-> 1
    with pytest.raises(IntegrityError, match="failed authentication"):
        Repository.open(store, dek).read_blob(blob_id, loc.blob_type)
