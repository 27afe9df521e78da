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
SEAL_OVERHEAD = 1 + NONCE_BYTES + TAG_BYTES
_AAD_PREFIX = b"fleetkeep/1/"
STORED = 0
ZSTD = 1
# Level 3: level 4 is 0.8 % smaller on the benchmark's compressible chunks (text, source) but
# costs +0.45 CPU s per GB, and level 6 3.3 % for 7x the CPU (bench, 1 GB): the initial
# backup's time matters more than those bytes.
ZSTD_LEVEL = 3
# A chunk of at least _SAMPLE_FROM bytes whose first _SAMPLE bytes shrink by less than
# _MIN_GAIN is stored raw: media and already-compressed files cost one small trial instead of
# a full compression. Smaller chunks (whole small files; CDC cuts nothing below 512 KiB) are
# compressed whole at once: zstd passes incompressible data at ~4 GB/s, while a sample of a
# compressible one is wasted work (measured on the bench's data: 1.16-1.19 CPU s of zstd
# against 1.31-1.44 s when sampling from 32 KiB, the same output).
_SAMPLE = 16 * 1024
_SAMPLE_FROM = 512 * 1024
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


def compress(data: bytes | memoryview) -> tuple[int, bytes | memoryview]:
    """Choose how to store ``data``: (``STORED``, data itself) or (``ZSTD``, zstd frame)."""
    n = len(data)
    if n >= _SAMPLE_FROM:
        sample = _compressor().compress(data[:_SAMPLE])
        if len(sample) > _SAMPLE * (1 - _MIN_GAIN):
            return STORED, data
    packed = _compressor().compress(data)
    if len(packed) >= n:
        return STORED, data
    return ZSTD, packed


def decompress(mode: int, payload: bytes) -> bytes:
    if mode == STORED:
        return payload
    if mode == ZSTD:
        return _unzstd(payload)
    raise IntegrityError(f"unknown storage mode {mode}")


def _unzstd(payload: bytes | memoryview) -> bytes:
    try:
        return _decompressor().decompress(payload)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"blob does not decompress: {exc}") from exc


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

    def seal_into(
        self,
        blob_type: BlobType,
        blob_id: bytes,
        mode: int,
        payload: bytes | memoryview,
        out: memoryview,
    ) -> None:
        """Seal an already ``compress``-ed payload (mode ‖ nonce ‖ ciphertext ‖ tag) into
        ``out``, exactly ``SEAL_OVERHEAD + len(payload)`` bytes: the pack writer hands out
        a slice of its pack buffer, so a sealed blob is never a buffer of its own."""
        nonce = os.urandom(NONCE_BYTES)
        out[0] = mode
        out[1 : 1 + NONCE_BYTES] = nonce
        aad = blob_aad(blob_type, blob_id) + bytes((mode,))
        self._cipher(blob_type).encrypt_into(nonce, payload, aad, out[1 + NONCE_BYTES :])

    def seal_blob(
        self, blob_type: BlobType, blob_id: bytes, plaintext: bytes | memoryview
    ) -> bytes:
        mode, payload = compress(plaintext)
        sealed = bytearray(SEAL_OVERHEAD + len(payload))
        with memoryview(sealed) as out:
            self.seal_into(blob_type, blob_id, mode, payload, out)
        return bytes(sealed)

    def open_blob(
        self,
        blob_type: BlobType,
        blob_id: bytes,
        sealed: bytes | memoryview,
        *,
        verify_id: bool = True,
    ) -> bytes:
        """Decrypt, decompress and check the keyed hash; any mismatch is an IntegrityError.

        The AAD already binds the blob to its id, so tampering fails authentication either
        way; ``verify_id`` also catches a writer that sealed the wrong bytes under an id
        (check does it; restore skips it to save a hash pass)."""
        payload, mode = self._open(
            self._cipher(blob_type), blob_aad(blob_type, blob_id), sealed, f"blob {blob_id.hex()}"
        )
        plaintext = decompress(mode, payload)
        if verify_id and self.blob_id(plaintext) != blob_id:
            raise IntegrityError(f"blob {blob_id.hex()} does not match its id")
        return plaintext

    def open_blob_into(
        self,
        blob_type: BlobType,
        blob_id: bytes,
        sealed: bytes | memoryview,
        out: memoryview,
    ) -> memoryview:
        """``open_blob`` without the id check, decrypting into ``out`` (at least the sealed
        length): restore reuses one buffer per thread instead of allocating each blob. The
        result is a view of ``out``, or of a fresh buffer when the blob was compressed."""
        what = f"blob {blob_id.hex()}"
        if len(sealed) < SEAL_OVERHEAD:
            raise IntegrityError(f"{what} is truncated")
        mode = sealed[0]
        view = memoryview(sealed)
        out = out[: len(sealed) - SEAL_OVERHEAD]
        try:
            self._cipher(blob_type).decrypt_into(
                view[1 : 1 + NONCE_BYTES],
                view[1 + NONCE_BYTES :],
                blob_aad(blob_type, blob_id) + bytes((mode,)),
                out,
            )
        except InvalidTag:
            raise IntegrityError(f"{what} failed authentication") from None
        if mode == STORED:
            return out
        if mode == ZSTD:
            return memoryview(_unzstd(out))
        raise IntegrityError(f"unknown storage mode {mode}")

    def seal_object(self, kind: ObjectKind, plaintext: bytes) -> bytes:
        mode, payload = compress(plaintext)
        nonce = os.urandom(NONCE_BYTES)
        aad = _AAD_PREFIX + kind.value + bytes((mode,))
        return bytes((mode,)) + nonce + self._meta.encrypt(nonce, payload, aad)

    def open_object(self, kind: ObjectKind, sealed: bytes, name: str = "") -> bytes:
        what = f"{kind.value.decode()} object {name}".rstrip()
        payload, mode = self._open(self._meta, _AAD_PREFIX + kind.value, sealed, what)
        return decompress(mode, payload)

    @staticmethod
    def _open(
        cipher: AESGCM, aad: bytes, sealed: bytes | memoryview, what: str
    ) -> tuple[bytes, int]:
        if len(sealed) < SEAL_OVERHEAD:
            raise IntegrityError(f"{what} is truncated")
        mode = sealed[0]
        view = memoryview(sealed)  # slices of a view: no copy of the ciphertext
        try:
            payload = cipher.decrypt(
                view[1 : 1 + NONCE_BYTES], view[1 + NONCE_BYTES :], aad + bytes((mode,))
            )
        except InvalidTag:
            raise IntegrityError(f"{what} failed authentication") from None
        return payload, mode


def content_name(data: bytes | bytearray) -> str:
    """Name of a stored object: unkeyed BLAKE3 of its (encrypted) bytes, so anyone holding the
    store can verify an object's integrity without the key."""
    return blake3.blake3(data).hexdigest()
