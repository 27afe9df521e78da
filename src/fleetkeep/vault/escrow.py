"""A copy of the user's wrapped DEK inside the repository, so store + key restore without
the database.

``keys/<name>`` holds JSON with the wrapped DEK (never the clear one), the key version, the
provider and what identifies its organization key (key check value or KMS key ARN). The
owner's email is sealed under a sub-key of the DEK: the store's operator learns nothing, and
an admin holding the organization key can still find a user's repository by email.
See docs/repository-format.md, "Escrowed data key".
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fleetkeep.backup.stores.base import Store
from fleetkeep.keys.models import ProviderName
from fleetkeep.keys.providers.base import VersionInfo

FOLDER = "keys/"
FORMAT = "fleetkeep-escrowed-key/1"
_OWNER_AAD = b"fleetkeep/owner/1"


class EscrowInvalid(ValueError):
    """A ``keys/`` object is not an escrowed key this version understands."""


@dataclass(frozen=True)
class EscrowedKey:
    user_id: int
    key_version: int
    provider: ProviderName
    kcv: str
    key_ref: str
    wrapped: bytes
    sealed_owner: bytes

    @property
    def context(self) -> str:
        return f"user:{self.user_id}"

    @property
    def version_info(self) -> VersionInfo:
        return VersionInfo(self.key_version, self.provider, self.kcv, self.key_ref)

    @property
    def name(self) -> str:
        """Named by the hash of the wrapped DEK: a rewrap (rotation) adds a new object."""
        return FOLDER + hashlib.sha256(self.wrapped).hexdigest()[:32]

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": FORMAT,
                "user_id": self.user_id,
                "key_version": self.key_version,
                "provider": str(self.provider),
                "kcv": self.kcv,
                "key_ref": self.key_ref,
                "wrapped": base64.b64encode(self.wrapped).decode(),
                "owner": base64.b64encode(self.sealed_owner).decode(),
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> EscrowedKey:
        try:
            d: Any = json.loads(raw)
            if d["format"] != FORMAT:
                raise EscrowInvalid(f"unknown escrowed key format {d['format']!r}")
            return cls(
                user_id=int(d["user_id"]),
                key_version=int(d["key_version"]),
                provider=ProviderName(d["provider"]),
                kcv=str(d["kcv"]),
                key_ref=str(d["key_ref"]),
                wrapped=base64.b64decode(d["wrapped"], validate=True),
                sealed_owner=base64.b64decode(d["owner"], validate=True),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, EscrowInvalid):
                raise
            raise EscrowInvalid(f"malformed escrowed key ({exc})") from None


def _owner_key(dek: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"fleetkeep/v1", info=b"repository-owner"
    ).derive(dek)


def seal_owner(dek: bytes, email: str) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(_owner_key(dek)).encrypt(nonce, email.encode(), _OWNER_AAD)


def open_owner(dek: bytes, sealed: bytes) -> str | None:
    """The owner's email, or None when ``dek`` does not open it."""
    try:
        return AESGCM(_owner_key(dek)).decrypt(sealed[:12], sealed[12:], _OWNER_AAD).decode()
    except (InvalidTag, ValueError):
        return None


def read_escrowed_keys(store: Store) -> list[EscrowedKey]:
    """Every escrowed key of the repository in ``store``, newest key version first."""
    found = []
    for info in store.list(FOLDER):
        try:
            found.append(EscrowedKey.from_json(store.get(info.name)))
        except EscrowInvalid:
            continue
    return sorted(found, key=lambda k: -k.key_version)


def publish_escrowed_key(store: Store, key: EscrowedKey) -> None:
    """Make ``key`` the repository's escrowed key; older copies (other wrappings of the same
    DEK) are removed once the new one is written."""
    names = [info.name for info in store.list(FOLDER)]
    if key.name not in names:
        store.put(key.name, key.to_json())
    for name in names:
        if name != key.name:
            store.delete(name)
