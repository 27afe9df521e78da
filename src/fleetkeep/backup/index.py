"""The repository index: which pack holds each blob, where, and how long it is.

On disk an index file is ``b"FKIX\\x01"`` then, per pack, its 32-byte id, a u32 LE entry
count and that many pack entries (see ``pack.py``), sealed as an ``index`` object.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fleetkeep.backup.crypto import BlobType
from fleetkeep.backup.errors import IntegrityError
from fleetkeep.backup.pack import ENTRY_BYTES, PackEntry, decode_entries, encode_entries

_MAGIC = b"FKIX\x01"
_PACK = struct.Struct("<32sI")


@dataclass(frozen=True, slots=True)
class BlobLocation:
    pack_id: str
    blob_type: BlobType
    offset: int
    length: int


def encode_index(packs: Iterable[tuple[str, list[PackEntry]]]) -> bytes:
    parts = [_MAGIC]
    for pack_id, entries in packs:
        parts.append(_PACK.pack(bytes.fromhex(pack_id), len(entries)))
        parts.append(encode_entries(entries))
    return b"".join(parts)


def decode_index(raw: bytes, what: str) -> Iterator[tuple[str, list[PackEntry]]]:
    if not raw.startswith(_MAGIC):
        raise IntegrityError(f"{what}: bad index magic")
    view = memoryview(raw)
    pos = len(_MAGIC)
    while pos < len(raw):
        if pos + _PACK.size > len(raw):
            raise IntegrityError(f"{what}: truncated pack record")
        pack_id, count = _PACK.unpack_from(raw, pos)
        pos += _PACK.size
        end = pos + count * ENTRY_BYTES
        if end > len(raw):
            raise IntegrityError(f"{what}: truncated entries")
        yield pack_id.hex(), decode_entries(view[pos:end], what)
        pos = end


class Index:
    """All known blobs in memory. Pack ids are interned so each entry costs one small tuple."""

    def __init__(self) -> None:
        self._pack_ids: list[str] = []
        self._pack_no: dict[str, int] = {}
        self._blobs: dict[bytes, tuple[int, int, int, int]] = {}
        self.pack_entries: dict[str, list[PackEntry]] = {}

    def add_pack(self, pack_id: str, entries: list[PackEntry]) -> None:
        no = self._pack_no.get(pack_id)
        if no is None:
            no = self._pack_no[pack_id] = len(self._pack_ids)
            self._pack_ids.append(pack_id)
        self.pack_entries[pack_id] = entries
        for e in entries:
            self._blobs.setdefault(e.blob_id, (no, e.blob_type, e.offset, e.length))

    def __contains__(self, blob_id: object) -> bool:
        return blob_id in self._blobs

    def __len__(self) -> int:
        return len(self._blobs)

    def get(self, blob_id: bytes) -> BlobLocation | None:
        hit = self._blobs.get(blob_id)
        if hit is None:
            return None
        no, t, offset, length = hit
        return BlobLocation(self._pack_ids[no], BlobType(t), offset, length)

    def packs(self) -> list[str]:
        return list(self.pack_entries)
