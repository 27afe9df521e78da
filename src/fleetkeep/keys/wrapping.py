"""Wrapping a data key (DEK) under an organization key (ekey), and key check values.

AES-256-GCM rather than RFC 3394 AES-KW, because GCM authenticates associated data: a wrapped
DEK is bound to its context (the user it belongs to), so a row copied onto another user fails
to unwrap instead of handing out the wrong key. Its 128-bit tag is also stronger than AES-KW's
64-bit integrity check, and it behaves like KMS Encrypt with an encryption context, so every
provider has the same semantics. Random 96-bit nonces are safe: one ekey wraps at most one DEK
per user and rotation, far below the 2**32 messages NIST allows per key.

Wrapped format: ``0x01 | nonce (12) | ciphertext (32) | tag (16)`` = 61 bytes.

The module depends only on ``cryptography``: the key connector imports it too.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

EKEY_BYTES = 32
DEK_BYTES = 32
FORMAT = 1
NONCE_BYTES = 12
TAG_BYTES = 16
WRAPPED_BYTES = 1 + NONCE_BYTES + DEK_BYTES + TAG_BYTES
_AAD_PREFIX = b"fleetkeep/dek/1\x00"
_KCV_LABEL = b"fleetkeep/key-check-value/1"


class UnwrapFailed(Exception):
    """The wrapped bytes are malformed or fail authentication; ``str()`` says which."""


def key_check_value(ekey: bytes) -> str:
    """16 hex digits that identify an ekey without revealing it (a keyed hash of a label)."""
    return hmac.new(ekey, _KCV_LABEL, hashlib.sha256).hexdigest()[:16]


def wrap_dek(ekey: bytes, dek: bytes, context: str) -> bytes:
    if len(ekey) != EKEY_BYTES:
        raise ValueError(f"an organization key is {EKEY_BYTES} bytes, got {len(ekey)}")
    if len(dek) != DEK_BYTES:
        raise ValueError(f"a data key is {DEK_BYTES} bytes, got {len(dek)}")
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(ekey).encrypt(nonce, dek, _AAD_PREFIX + context.encode())
    return bytes([FORMAT]) + nonce + sealed


def unwrap_dek(ekey: bytes, wrapped: bytes, context: str) -> bytes:
    if len(wrapped) != WRAPPED_BYTES:
        raise UnwrapFailed(f"a wrapped key is {WRAPPED_BYTES} bytes, got {len(wrapped)}")
    if wrapped[0] != FORMAT:
        raise UnwrapFailed(f"unknown wrapped key format {wrapped[0]}")
    nonce, sealed = wrapped[1 : 1 + NONCE_BYTES], wrapped[1 + NONCE_BYTES :]
    try:
        return AESGCM(ekey).decrypt(nonce, sealed, _AAD_PREFIX + context.encode())
    except InvalidTag:
        raise UnwrapFailed(
            "authentication failed: the wrapped key was altered, belongs to another user, "
            "or was wrapped by a different organization key"
        ) from None
