"""Pack files: sealed blobs back to back, then a sealed header listing them, then its length.

Layout: ``blob_0 … blob_n | sealed header | u32 LE length of sealed header``. The header is
sealed with the metadata key; each blob is sealed on its own (see ``crypto.py``), so a reader
fetches one blob with one range read.
"""

from __future__ import annotations

import mmap
import struct
from typing import NamedTuple

import blake3

from fleetkeep.backup.crypto import ID_BYTES, BlobType, Crypto, ObjectKind
from fleetkeep.backup.errors import IntegrityError
from fleetkeep.backup.stores.base import Part

PACK_TARGET_BYTES = 16 * 1024 * 1024
_ENTRY = struct.Struct("<B32sII")
_TRAILER = struct.Struct("<I")
_HEADER_MAGIC = b"FKPH\x01"


class PackEntry(NamedTuple):
    """A named tuple: an index load makes one per blob, and tuples are built in C."""

    blob_type: BlobType
    blob_id: bytes
    offset: int
    length: int


def pack_name(pack_id: str) -> str:
    return f"packs/{pack_id[:2]}/{pack_id}"


def encode_entries(entries: list[PackEntry]) -> bytes:
    return b"".join(_ENTRY.pack(e.blob_type, e.blob_id, e.offset, e.length) for e in entries)


def decode_entries(raw: bytes | memoryview, what: str) -> list[PackEntry]:
    if len(raw) % _ENTRY.size:
        raise IntegrityError(f"{what}: entry table has a partial entry")
    try:
        types = _BLOB_TYPES
        new = PackEntry._make
        return [new((types[t], i, o, n)) for t, i, o, n in _ENTRY.iter_unpack(raw)]
    except KeyError as exc:
        raise IntegrityError(f"{what}: unknown blob type {exc.args[0]}") from None


_BLOB_TYPES = {t.value: t for t in BlobType}
ENTRY_BYTES = _ENTRY.size
assert _ENTRY.size == 1 + ID_BYTES + 8


class PackWriter:
    """One pack being filled: its blobs are sealed straight into one anonymous mapping, back
    to back in the order their space was reserved.

    Why: a buffer per sealed blob (a fresh mapping for the large ones) cost about 1 CPU s per
    GB stored in page faults, zeroing and unmapping; the sink reuses a written pack's mapping,
    whose pages are already there. Space is reserved under the sink's lock (``reserve``) and
    sealed into outside it, so ``writing`` counts reservations not yet filled: a closed pack
    is written out only when it drops to zero."""

    def __init__(self, buffer: mmap.mmap) -> None:
        self.buffer = buffer
        self._view = memoryview(buffer)
        self.entries: list[PackEntry] = []
        self.size = 0
        self.writing = 0
        self.closed = False

    def reserve(self, blob_type: BlobType, blob_id: bytes, length: int) -> memoryview | None:
        """The slice a blob of ``length`` sealed bytes goes into, or None when it does not fit."""
        start = self.size
        if start + length > len(self.buffer):
            return None
        self.entries.append(PackEntry(blob_type, blob_id, start, length))
        self.size = start + length
        self.writing += 1
        return self._view[start : start + length]

    def drop(self, blob_id: bytes) -> None:
        """Forget a reserved blob whose sealing failed; its bytes stay as unreferenced filler."""
        self.entries = [e for e in self.entries if e.blob_id != blob_id]

    def finish(self, crypto: Crypto) -> tuple[str, list[Part]]:
        """Return the pack id (BLAKE3 of the whole file) and its bytes, as parts."""
        header = crypto.seal_object(
            ObjectKind.PACK_HEADER, _HEADER_MAGIC + encode_entries(self.entries)
        )
        parts: list[Part] = [self._view[: self.size], header, _TRAILER.pack(len(header))]
        hasher = blake3.blake3()
        for part in parts:
            hasher.update(part)
        return hasher.hexdigest(), parts


def header_length(trailer: bytes) -> int:
    (n,) = _TRAILER.unpack(trailer)
    return int(n)


TRAILER_BYTES = _TRAILER.size


def read_header(crypto: Crypto, sealed_header: bytes, what: str) -> list[PackEntry]:
    plain = crypto.open_object(ObjectKind.PACK_HEADER, sealed_header, what)
    if not plain.startswith(_HEADER_MAGIC):
        raise IntegrityError(f"{what}: bad pack header magic")
    return decode_entries(memoryview(plain)[len(_HEADER_MAGIC) :], what)


def parse_pack(crypto: Crypto, data: bytes, what: str) -> list[PackEntry]:
    """Entries of a whole pack read into memory, with their bounds checked."""
    if len(data) < TRAILER_BYTES:
        raise IntegrityError(f"{what}: shorter than its trailer")
    n = header_length(data[-TRAILER_BYTES:])
    start = len(data) - TRAILER_BYTES - n
    if start < 0:
        raise IntegrityError(f"{what}: header length {n} exceeds the pack")
    entries = read_header(crypto, data[start : len(data) - TRAILER_BYTES], what)
    for e in entries:
        if e.offset + e.length > start:
            raise IntegrityError(f"{what}: blob {e.blob_id.hex()} lies outside the blob area")
    return entries
