"""FastCDC chunking: deterministic, size-bounded, and resistant to shifted content."""

from __future__ import annotations

import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from pyfastcdc import FastCDC

from fleetkeep.backup.chunker import Chunker, ChunkerParams

PARAMS = ChunkerParams(min_size=2048, avg_size=8192, max_size=32768, seed=12345)


def _data(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _chunks(chunker: Chunker, data: bytes) -> list[bytes]:
    return [bytes(c) for c in chunker.split(data)]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(0, 300_000))
def test_chunks_reassemble_and_respect_size_bounds(seed: int, n: int) -> None:
    data = _data(seed, n)
    chunks = _chunks(Chunker(PARAMS), data)
    assert b"".join(chunks) == data
    assert all(len(c) <= PARAMS.max_size for c in chunks)
    assert all(len(c) >= PARAMS.min_size for c in chunks[:-1])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_chunking_is_deterministic(seed: int) -> None:
    data = _data(seed, 200_000)
    assert _chunks(Chunker(PARAMS), data) == _chunks(Chunker(PARAMS), data)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), where=st.floats(0, 1), byte=st.binary(min_size=1, max_size=1))
def test_inserting_a_byte_keeps_most_chunks(seed: int, where: float, byte: bytes) -> None:
    data = _data(seed, 400_000)
    pos = int(where * len(data))
    before = _chunks(Chunker(PARAMS), data)
    after = _chunks(Chunker(PARAMS), data[:pos] + byte + data[pos:])
    survivors = set(before) & set(after)
    # One insertion disturbs the chunk it lands in and perhaps its neighbour.
    assert len(survivors) >= len(before) - 3


def test_seed_changes_cut_points() -> None:
    data = _data(7, 300_000)
    other = ChunkerParams(PARAMS.min_size, PARAMS.avg_size, PARAMS.max_size, seed=999)
    assert _chunks(Chunker(PARAMS), data) != _chunks(Chunker(other), data)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(0, 150_000))
def test_split_file_matches_split_of_the_same_bytes(tmp_path_factory, seed: int, n: int) -> None:  # type: ignore[no-untyped-def]
    data = _data(seed, n)
    path = tmp_path_factory.mktemp("f") / "file"
    path.write_bytes(data)
    # A read buffer smaller than most files: chunks cut across refills of the buffer.
    chunker = Chunker(PARAMS, read_ahead=4096)
    fd = os.open(path, os.O_RDONLY)
    try:
        # The size hint may be stale (the file changed since stat): chunks must not change.
        for hint in (n, max(0, n - 1000), n + 1000, 0):
            os.lseek(fd, 0, os.SEEK_SET)
            assert [bytes(c) for c in chunker.split_file(fd, hint)] == _chunks(chunker, data)
    finally:
        os.close(fd)


def test_split_file_cuts_where_the_stream_chunker_does(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Repositories written before split_file had its own buffer cut with pyfastcdc's
    stream chunker: the same file must give the same chunks (and so dedup against them)."""
    params = ChunkerParams(seed=4242)
    rng = random.Random(3)
    # Random bytes, then a long run of one byte (forced cuts at the largest chunk size).
    data = rng.randbytes(21 * 1024 * 1024) + bytes(9 * 1024 * 1024) + rng.randbytes(12345)
    path = tmp_path / "big"
    path.write_bytes(data)
    cdc = FastCDC(params.avg_size, min_size=params.min_size, max_size=params.max_size, seed=4242)
    with path.open("rb") as f:
        expected = [bytes(c.data) for c in cdc.cut_stream(f)]
    fd = os.open(path, os.O_RDONLY)
    try:
        got = [bytes(c) for c in Chunker(params).split_file(fd, len(data))]
    finally:
        os.close(fd)
    assert [len(c) for c in got] == [len(c) for c in expected]
    assert got == expected
