"""The agent's pack cache: whole packs fetched once, reads served as slices of them."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

import pytest

from fleetkeep.agent.remote import PackCache
from fleetkeep.backup.errors import ObjectNotFound
from tests.support.waits import wait_for

PACKS = {f"packs/{i:02x}/{i:02x}{'0' * 62}": os.urandom(3 * 1024 * 1024 + i) for i in range(8)}


class CountingFetch:
    def __init__(self, fail_first: int = 0) -> None:
        self.calls: Counter[str] = Counter()
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def __call__(self, name: str) -> bytes:
        with self.lock:
            self.calls[name] += 1
            if self.fail_first:
                self.fail_first -= 1
                raise ObjectNotFound(f"object {name} not found")
        return PACKS[name]


def test_ranged_reads_return_the_exact_bytes_with_one_fetch_per_pack() -> None:
    fetch = CountingFetch()
    cache = PackCache(fetch, keep=len(PACKS))
    try:
        for name, data in PACKS.items():
            for offset, length in ((0, 1), (5, 1024 * 1024), (len(data) - 7, 7), (1000, 3)):
                assert cache.read(name, offset, length) == data[offset : offset + length]
            assert cache.read(name, len(data) - 2, 100) == data[-2:]
    finally:
        cache.close()
    assert fetch.calls == Counter(dict.fromkeys(PACKS, 1))


def test_hinted_packs_are_fetched_ahead_but_never_more_than_ahead_unread() -> None:
    fetch = CountingFetch()
    names = list(PACKS)
    cache = PackCache(fetch, ahead=2, keep=len(PACKS))
    try:
        for name in names:
            cache.prefetch(name)
        wait_for(lambda: len(fetch.calls) == 2, "two fetches")
        time.sleep(0.1)
        assert set(fetch.calls) == set(names[:2])
        cache.read(names[0], 0, 10)  # read: one more hinted pack may start
        wait_for(lambda: len(fetch.calls) == 3, "a third fetch")
        time.sleep(0.1)
        assert set(fetch.calls) == set(names[:3])
        for name in names:
            assert cache.read(name, 3, 5) == PACKS[name][3:8]
    finally:
        cache.close()
    assert fetch.calls == Counter(dict.fromkeys(PACKS, 1))


def test_reading_more_packs_than_kept_drops_the_least_recently_read() -> None:
    fetch = CountingFetch()
    a, b, c = list(PACKS)[:3]
    cache = PackCache(fetch, keep=2)
    try:
        for name in (a, b, a, c, a, b):
            assert cache.read(name, 7, 9) == PACKS[name][7:16]
    finally:
        cache.close()
    assert fetch.calls == Counter({a: 1, b: 2, c: 1})


def test_a_failed_fetch_is_not_kept_and_the_next_read_tries_again() -> None:
    fetch = CountingFetch(fail_first=1)
    name = next(iter(PACKS))
    cache = PackCache(fetch)
    try:
        with pytest.raises(ObjectNotFound):
            cache.read(name, 0, 4)
        assert cache.read(name, 0, 4) == PACKS[name][:4]
    finally:
        cache.close()
    assert fetch.calls[name] == 2
