"""Bearer secrets shown once and kept only as SHA-256 hashes.

Secrets are 256 random bits, so a fast hash is enough: there is nothing to brute-force.
A short kind prefix (``fka_`` admin API, ``fks_`` session …) lets secret scanners and admins
tell tokens apart.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_token(prefix: str) -> tuple[str, str]:
    """Return (the secret to show once, its hash to store)."""
    plain = f"{prefix}_{secrets.token_urlsafe(32)}"
    return plain, hash_token(plain)


def hash_token(plain: str) -> str:
    return hashlib.sha256(plain.encode("utf-8")).hexdigest()


def display_prefix(plain: str) -> str:
    """The first characters, enough to recognise a token in a list without revealing it."""
    return plain[:12]


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
