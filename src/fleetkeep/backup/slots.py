"""A counting semaphore built on ``queue.SimpleQueue``.

Backup and restore bound their queued pool tasks with it. ``threading.Semaphore`` is Python
code around a ``Condition``: every release takes the GIL for a notify, measured as a large
share of the GIL-held time of a backup. ``SimpleQueue`` blocks and wakes in C.
"""

from __future__ import annotations

import queue


class Slots:
    def __init__(self, n: int) -> None:
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(n):
            self._tokens.put(None)

    def acquire(self) -> None:
        self._tokens.get()

    def release(self) -> None:
        self._tokens.put(None)
