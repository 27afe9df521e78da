"""Sealing directory secrets (bind passwords, client secrets) at rest.

AES-256-GCM with a key in ``<data_dir>/secrets.key`` (created on first use, mode 0600), so a
copy of the database alone does not reveal them. Replicas must share the file. A sealed value
is ``v1:`` + base64(nonce ‖ ciphertext ‖ tag).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fleetkeep.errors import FleetkeepError

KEY_FILE = "secrets.key"
_AAD = b"fleetkeep directory secret v1"


class SecretUnreadable(FleetkeepError):
    status = 500
    code = "secret_unreadable"
    title = "Stored secret unreadable"


def _key(data_dir: Path) -> bytes:
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        encoded = base64.b64encode(AESGCM.generate_key(bit_length=256))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first; read theirs
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(encoded + b"\n")
    key = base64.b64decode(path.read_bytes().strip())
    if len(key) != 32:
        raise SecretUnreadable(f"{path} does not hold a 256-bit key")
    return key


def seal(data_dir: Path, plain: str) -> str:
    nonce = os.urandom(12)
    sealed = AESGCM(_key(data_dir)).encrypt(nonce, plain.encode(), _AAD)
    return "v1:" + base64.b64encode(nonce + sealed).decode()


def unseal(data_dir: Path, sealed: str) -> str:
    version, _, body = sealed.partition(":")
    if version != "v1":
        raise SecretUnreadable("stored secret has an unknown format")
    raw = base64.b64decode(body)
    try:
        return AESGCM(_key(data_dir)).decrypt(raw[:12], raw[12:], _AAD).decode()
    except InvalidTag:
        raise SecretUnreadable(
            f"stored secret cannot be decrypted with {data_dir / KEY_FILE} (wrong key file?)"
        ) from None
