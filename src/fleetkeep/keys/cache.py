"""A bounded, short-lived in-memory cache of unwrapped DEKs (LRU with a time to live).

Entries are keyed by user and remember the wrapped bytes they came from, so a key rewrapped
or replaced elsewhere (another replica, a rotation) is a miss, never a stale hit. Evicted
entries are overwritten with zeros; copies already handed to callers are theirs to drop (Python
cannot promise more).
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Entry:
    wrapped: bytes
    dek: bytearray
    expires: float


class DekCache:
    def __init__(
        self,
        max_entries: int = 10_000,
        ttl_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.ttl = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, user_id: int, wrapped: bytes) -> bytes | None:
        with self._lock:
            entry = self._entries.get(user_id)
            if entry is None:
                self.misses += 1
                return None
            if entry.expires <= self._clock() or not hmac.compare_digest(entry.wrapped, wrapped):
                self._drop(user_id)
                self.misses += 1
                return None
            self._entries.move_to_end(user_id)
            self.hits += 1
            return bytes(entry.dek)

    def put(self, user_id: int, wrapped: bytes, dek: bytes) -> None:
        if self.max_entries <= 0 or self.ttl <= 0:
            return
        with self._lock:
            self._drop(user_id)
            self._entries[user_id] = _Entry(
                bytes(wrapped), bytearray(dek), self._clock() + self.ttl
            )
            while len(self._entries) > self.max_entries:
                self._drop(next(iter(self._entries)))

    def clear(self) -> None:
        with self._lock:
            for user_id in list(self._entries):
                self._drop(user_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _drop(self, user_id: int) -> None:
        entry = self._entries.pop(user_id, None)
        if entry is not None:
            entry.dek[:] = bytes(len(entry.dek))
