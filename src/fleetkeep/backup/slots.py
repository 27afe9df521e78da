"""A counting semaphore built on ``queue.SimpleQueue``.

Backup and restore bound their queued pool tasks with it (``submit``). ``threading.Semaphore``
is Python code around a ``Condition``: every release takes the GIL for a notify, measured as
a large share of the GIL-held time of a backup. ``SimpleQueue`` blocks and wakes in C.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")


class Slots:
    def __init__(self, n: int) -> None:
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(n):
            self._tokens.put(None)

    def acquire(self) -> None:
        self._tokens.get()

    def release(self) -> None:
        self._tokens.put(None)

    def submit(self, pool: Executor, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn`` on ``pool`` once a slot is free; the slot returns when it is done."""
        self.acquire()
        fut = pool.submit(fn, *args)
        fut.add_done_callback(lambda _: self.release())
        return fut
