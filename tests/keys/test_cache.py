"""The DEK cache: bounded, expiring, never stale, and wiped on demand."""

from __future__ import annotations

from fleetkeep.keys.cache import DekCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_their_time_to_live() -> None:
    clock = Clock()
    cache = DekCache(ttl_seconds=10, clock=clock)
    cache.put(1, b"w1", b"k" * 32)
    clock.now = 9.9
    assert cache.get(1, b"w1") == b"k" * 32
    clock.now = 10.0
    assert cache.get(1, b"w1") is None
    assert len(cache) == 0


def test_the_least_recently_used_entry_goes_first() -> None:
    cache = DekCache(max_entries=2)
    cache.put(1, b"w1", b"a" * 32)
    cache.put(2, b"w2", b"b" * 32)
    assert cache.get(1, b"w1") is not None
    cache.put(3, b"w3", b"c" * 32)
    assert cache.get(2, b"w2") is None
    assert cache.get(1, b"w1") is not None
    assert cache.get(3, b"w3") is not None


def test_a_rewrapped_key_is_a_miss_not_a_stale_hit() -> None:
    cache = DekCache()
    cache.put(1, b"old-wrapped", b"a" * 32)
    assert cache.get(1, b"new-wrapped") is None
    assert cache.get(1, b"old-wrapped") is None


def test_clear_overwrites_the_cached_keys() -> None:
    cache = DekCache()
    cache.put(1, b"w1", b"a" * 32)
    entry = cache._entries[1]
    cache.clear()
    assert len(cache) == 0
    assert bytes(entry.dek) == bytes(32)


def test_a_zero_ttl_disables_caching() -> None:
    cache = DekCache(ttl_seconds=0)
    cache.put(1, b"w1", b"a" * 32)
    assert cache.get(1, b"w1") is None
