"""Blob and object sealing: keyed BLAKE3 ids, optional zstd, AES-256-GCM with bound AAD.

Every stored byte is authenticated. A blob's associated data names its type and id, so a blob
moved to another place in the repository fails to open instead of returning the wrong data.
"""

from __future__ import annotations

import enum
import os
import threading

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fleetkeep.backup.errors import IntegrityError
from fleetkeep.keys.subkeys import SubKeys

NONCE_BYTES = 12
TAG_BYTES = 16
ID_BYTES = 32
SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES
_AAD_PREFIX = b"fleetkeep/1/"
_STORED = 0
_ZSTD = 1
ZSTD_LEVEL = 3
# A chunk whose first _SAMPLE bytes shrink by less than _MIN_GAIN is stored raw: media and
# already-compressed files cost one small trial compression instead of a full one.
_SAMPLE = 16 * 1024
_MIN_GAIN = 0.03


class BlobType(enum.IntEnum):
    DATA = 1
    TREE = 2


class ObjectKind(enum.Enum):
    """Repository objects outside packs; the kind is the associated data of their seal."""

    CONFIG = b"config"
    INDEX = b"index"
    SNAPSHOT = b"snapshot"
    PACK_HEADER = b"pack-header"
    PENDING = b"pending"


_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    # ZstdCompressor objects are not thread-safe; one per thread keeps them reusable.
    c: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if c is None:
        c = _local.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def compress(data: bytes | memoryview) -> bytes:
    """Frame ``data`` as stored or zstd; the first byte says which."""
    n = len(data)
    if n >= 2 * _SAMPLE:
        sample = _compressor().compress(data[:_SAMPLE])
        if len(sample) > _SAMPLE * (1 - _MIN_GAIN):
            return bytes((_STORED,)) + data
    packed = _compressor().compress(data)
    if len(packed) >= n:
        return bytes((_STORED,)) + data
    return bytes((_ZSTD,)) + packed


def decompress(framed: bytes) -> bytes:
    if not framed:
        raise IntegrityError("empty blob frame")
    mode = framed[0]
    if mode == _STORED:
        return framed[1:]
    if mode == _ZSTD:
        try:
            return _decompressor().decompress(memoryview(framed)[1:])
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"blob does not decompress: {exc}") from exc
    raise IntegrityError(f"unknown blob frame {mode}")


def blob_aad(blob_type: BlobType, blob_id: bytes) -> bytes:
    return _AAD_PREFIX + b"blob/" + bytes((blob_type,)) + blob_id


class Crypto:
    """The user's sub-keys bound into the operations the repository needs."""

    def __init__(self, keys: SubKeys) -> None:
        self._id_key = keys.chunk_id
        self._data = AESGCM(keys.data)
        self._meta = AESGCM(keys.metadata)

    def blob_id(self, plaintext: bytes | memoryview) -> bytes:
        """Keyed BLAKE3: equal chunks dedupe, yet ids reveal nothing without the key."""
        return blake3.blake3(plaintext, key=self._id_key).digest()

    def _cipher(self, blob_type: BlobType) -> AESGCM:
        return self._data if blob_type == BlobType.DATA else self._meta

    def seal_blob(
        self, blob_type: BlobType, blob_id: bytes, plaintext: bytes | memoryview
    ) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        framed = compress(plaintext)
        return nonce + self._cipher(blob_type).encrypt(nonce, framed, blob_aad(blob_type, blob_id))

    def open_blob(
        self, blob_type: BlobType, blob_id: bytes, sealed: bytes, *, verify_id: bool = True
    ) -> bytes:
        """Decrypt, decompress and check the keyed hash; any mismatch is an IntegrityError.

        The AAD already binds the blob to its id, so tampering fails authentication either
        way; ``verify_id`` also catches a writer that sealed the wrong bytes under an id
        (check does it; restore skips it to save a hash pass)."""
        if len(sealed) < SEAL_OVERHEAD:
            raise IntegrityError(f"blob {blob_id.hex()} is truncated")
        try:
            framed = self._cipher(blob_type).decrypt(
                sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], blob_aad(blob_type, blob_id)
            )
        except InvalidTag:
            raise IntegrityError(f"blob {blob_id.hex()} failed authentication") from None
        plaintext = decompress(framed)
        if verify_id and self.blob_id(plaintext) != blob_id:
            raise IntegrityError(f"blob {blob_id.hex()} does not match its id")
        return plaintext

    def seal_object(self, kind: ObjectKind, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        framed = compress(plaintext)
        return nonce + self._meta.encrypt(nonce, framed, _AAD_PREFIX + kind.value)

    def open_object(self, kind: ObjectKind, sealed: bytes, name: str = "") -> bytes:
        if len(sealed) < SEAL_OVERHEAD:
            raise IntegrityError(f"{kind.value.decode()} object {name} is truncated")
        try:
            framed = self._meta.decrypt(
                sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _AAD_PREFIX + kind.value
            )
        except InvalidTag:
            raise IntegrityError(
                f"{kind.value.decode()} object {name} failed authentication"
            ) from None
        return decompress(framed)


def content_name(data: bytes | bytearray) -> str:
    """Name of a stored object: unkeyed BLAKE3 of its (encrypted) bytes, so anyone holding the
    store can verify an object's integrity without the key."""
    return blake3.blake3(data).hexdigest()
