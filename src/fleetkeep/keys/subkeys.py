"""Sub-keys derived from a user's data key (DEK) with HKDF-SHA256.

The agent and the server derive the same sub-keys, so this module depends on nothing but
``cryptography`` and is safe for the agent to import.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

DEK_BYTES = 32
_SALT = b"fleetkeep/v1"


@dataclass(frozen=True, repr=False)
class SubKeys:
    """``chunk_id`` keys BLAKE3 chunk ids; ``data`` encrypts blobs; ``metadata`` encrypts
    snapshots, trees and indexes. ``repr`` hides the bytes so they never reach a log."""

    chunk_id: bytes
    data: bytes
    metadata: bytes

    def __repr__(self) -> str:
        return "SubKeys(<hidden>)"


def _derive(dek: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=purpose).derive(dek)


def derive_subkeys(dek: bytes) -> SubKeys:
    if len(dek) != DEK_BYTES:
        raise ValueError(f"a data key is {DEK_BYTES} bytes, got {len(dek)}")
    return SubKeys(
        chunk_id=_derive(dek, b"chunk-id-mac"),
        data=_derive(dek, b"data-encryption"),
        metadata=_derive(dek, b"metadata-encryption"),
    )
