"""Looking for secrets in raw bytes: a database file, a dump, a log, a blob store.

Reusable by any test that promises "this secret is nowhere in X": ``find_secrets`` searches
raw bytes, hex (either case) and base64 (standard and URL-safe, at every alignment, so a
secret embedded in a longer base64 string is found too).
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from sqlalchemy.engine import make_url


def encodings(secret: bytes) -> dict[str, bytes]:
    found = {
        "raw": secret,
        "hex": secret.hex().encode(),
        "HEX": secret.hex().upper().encode(),
    }
    for shift in range(3):
        # Base64 of the secret preceded by ``shift`` unknown bytes: drop the characters that
        # depend on those bytes or on what follows, keep the stable middle.
        encoded = base64.b64encode(b"\0" * shift + secret)
        start = (shift * 4 + 2) // 3 if shift else 0
        stable = encoded[start : (len(b"\0" * shift + secret) // 3) * 4]
        found[f"base64+{shift}"] = stable
        found[f"base64url+{shift}"] = stable.replace(b"+", b"-").replace(b"/", b"_")
    return found


def find_secrets(haystack: bytes, secrets: Mapping[str, bytes]) -> list[str]:
    """Names (with the encoding) of the secrets that occur in ``haystack``."""
    hits = []
    for name, secret in secrets.items():
        for encoding, needle in encodings(secret).items():
            if needle and needle in haystack:
                hits.append(f"{name} ({encoding})")
    return hits


def database_bytes(url: str) -> bytes:
    """Everything the database holds, as bytes: SQLite's files (with the WAL), or pg_dump."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(str(parsed.database))
        # Read by another process: closing any descriptor of these files in this one would
        # drop the POSIX locks its own SQLite connections hold on them; a later process would
        # then think it was the last one, delete the -wal and -shm files, and every new
        # connection would fail with "disk I/O error" (seen in the next test of the worker).
        files = [str(p) for p in _sqlite_files(path)]
        return subprocess.run(["cat", *files], capture_output=True, check=True).stdout
    dump = subprocess.run(
        [
            "pg_dump",
            "--no-owner",
            "-h",
            parsed.host or "127.0.0.1",
            "-p",
            str(parsed.port or 5432),
            "-U",
            parsed.username or "postgres",
            str(parsed.database),
        ],
        capture_output=True,
        check=True,
        timeout=120,
    )
    return dump.stdout


def _sqlite_files(path: Path) -> Iterable[Path]:
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if candidate.exists():
            yield candidate
