"""The storage interface a repository needs: flat names, immutable content-addressed objects.

Names look like ``config``, ``packs/ab/abcdef…``, ``index/…``, ``snapshots/…``. Everything a
repository does goes through these six calls, so an HTTP store (agent → server) only has to
carry them over the wire.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from fleetkeep.backup.errors import BackupError, ObjectNotFound

# A piece of an object to write (a pack's blobs are a view of the buffer they were sealed into).
Part = bytes | bytearray | memoryview

_NAME = re.compile(r"^[a-z]+(/[0-9a-z][0-9a-z._-]*)*$")


class InvalidName(BackupError):
    code = "invalid_object_name"


def check_name(name: str) -> str:
    """Reject names that could leave the store's root or collide with temporary files."""
    if not _NAME.match(name) or ".." in name:
        raise InvalidName(f"invalid object name {name!r}")
    return name


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    modified: datetime


class Store(ABC):
    """A blob store. ``put`` is atomic: readers see the whole object or nothing."""

    @abstractmethod
    def put(self, name: str, data: bytes | bytearray) -> None: ...

    def put_parts(self, name: str, parts: Sequence[Part]) -> None:
        """``put`` of the parts' concatenation; a store that can gather-write avoids the join
        (a pack arrives as its sealed blobs)."""
        self.put(name, b"".join(parts))

    @abstractmethod
    def get(self, name: str) -> bytes:
        """Raise ``ObjectNotFound`` when absent."""

    @abstractmethod
    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``; a negative ``offset`` counts from the end."""

    def get_range_into(self, name: str, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` from ``offset`` (not negative); a store that can read into a buffer
        saves an allocation per call (restore's large blobs)."""
        data = self.get_range(name, offset, len(buf))
        if len(data) != len(buf):
            raise ObjectNotFound(f"object {name} is shorter than {offset + len(buf)} bytes")
        buf[:] = data

    def prefetch(self, name: str) -> None:  # noqa: B027 (an optional hint, not abstract)
        """A hint that ``name`` will be read soon; stores that can read ahead do."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects whose name starts with ``prefix`` (a folder such as ``packs/``)."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Deleting an absent object is not an error: prune may be retried."""
