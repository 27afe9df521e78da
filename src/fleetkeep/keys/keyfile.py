"""The key file: organization keys (ekeys) kept outside the database and the blob store.

JSON, mode 0600, written by ``fleetkeep init`` (local provider) or ``fleetkeep key-connector
new-key`` (customer side)::

    {"format": "fleetkeep-ekey/1",
     "keys": [{"key": "<base64, 32 bytes>", "kcv": "<16 hex>", "created_at": "<ISO 8601>"}]}

The last key is the current one. Older keys stay, so that the DEKs they wrapped can still be
unwrapped while a rotation rewraps them. The database refers to a key only by its key check
value (kcv), never by its bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetkeep.keys.errors import KeyFileInvalid
from fleetkeep.keys.wrapping import EKEY_BYTES, key_check_value

FORMAT = "fleetkeep-ekey/1"


@dataclass(frozen=True, repr=False)
class Ekey:
    """One organization key. ``repr`` shows only the check value, so a log never gets the key."""

    key: bytes
    kcv: str
    created_at: str

    def __repr__(self) -> str:
        return f"Ekey(kcv={self.kcv})"


def load_keys(path: Path) -> list[Ekey]:
    """The keys in the file, oldest first; refuses a file that others can read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileInvalid(f"key file {path} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileInvalid(
            f"key file {path} is accessible to other users (mode {stat.S_IMODE(mode):04o}); "
            f"run 'chmod 600 {path}'"
        )
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KeyFileInvalid(f"key file {path} is unreadable: {type(exc).__name__}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise KeyFileInvalid(f"key file {path} is not a {FORMAT} file")
    entries = document.get("keys")
    if not isinstance(entries, list) or not entries:
        raise KeyFileInvalid(f"key file {path} holds no keys")
    return [_parse(path, i, entry) for i, entry in enumerate(entries)]


def current_key(path: Path) -> Ekey:
    return load_keys(path)[-1]


def ensure_local_key(path: Path) -> Ekey:
    """Create the key file with one new key unless it exists; return its current key.

    ``fleetkeep init`` calls this for the embedded (single-box) set-up.
    """
    if path.exists():
        return current_key(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = _new_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it in between
        return current_key(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(_document([key]))
        handle.flush()
        os.fsync(handle.fileno())
    return key


def add_key(path: Path) -> Ekey:
    """Append a new current key (for a rotation); the file is replaced atomically."""
    keys = [*load_keys(path), _new_key()] if path.exists() else [_new_key()]
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ekey-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(_document(keys))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return keys[-1]


def _new_key() -> Ekey:
    key = os.urandom(EKEY_BYTES)
    return Ekey(key, key_check_value(key), datetime.now(UTC).isoformat(timespec="seconds"))


def _document(keys: list[Ekey]) -> str:
    entries = [
        {"key": base64.b64encode(k.key).decode(), "kcv": k.kcv, "created_at": k.created_at}
        for k in keys
    ]
    return json.dumps({"format": FORMAT, "keys": entries}, indent=2) + "\n"


def _parse(path: Path, index: int, entry: Any) -> Ekey:
    where = f"key file {path}, key #{index + 1}"
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
        raise KeyFileInvalid(f"{where}: no 'key'")
    try:
        key = base64.b64decode(entry["key"], validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileInvalid(f"{where}: 'key' is not base64") from None
    if len(key) != EKEY_BYTES:
        raise KeyFileInvalid(f"{where}: a key is {EKEY_BYTES} bytes, this one {len(key)}")
    kcv = key_check_value(key)
    if entry.get("kcv", kcv) != kcv:
        raise KeyFileInvalid(f"{where}: the key does not match its check value (damaged file)")
    return Ekey(key, kcv, str(entry.get("created_at", "")))
