"""Content-defined chunking (FastCDC 2020, via the Cython ``pyfastcdc``).

Cut points depend on content, so an insertion shifts only the chunks around it. The gear table
is XORed with a per-repository secret seed, so chunk lengths do not fingerprint known files.
``pyfastcdc`` releases the GIL while it scans, so threads chunk in parallel.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from pyfastcdc import FastCDC

# Chosen from the measurement in docs/repository-format.md ("Choosing the chunk size").
DEFAULT_MIN = 512 * 1024
DEFAULT_AVG = 1024 * 1024
DEFAULT_MAX = 8 * 1024 * 1024
# What a read buffer holds beyond the largest chunk (reads are at least this large).
READ_AHEAD = 1024 * 1024


@dataclass(frozen=True)
class ChunkerParams:
    min_size: int = DEFAULT_MIN
    avg_size: int = DEFAULT_AVG
    max_size: int = DEFAULT_MAX
    seed: int = 0


class Chunker:
    def __init__(self, params: ChunkerParams, read_ahead: int = READ_AHEAD) -> None:
        self.params = params
        self.read_ahead = read_ahead
        self._local = threading.local()

    def _cdc(self) -> FastCDC:
        # A FastCDC object is not safe to share between threads; it is cheap to make one each.
        cdc: FastCDC | None = getattr(self._local, "cdc", None)
        if cdc is None:
            p = self.params
            cdc = self._local.cdc = FastCDC(
                p.avg_size, min_size=p.min_size, max_size=p.max_size, seed=p.seed
            )
        return cdc

    def split(self, data: bytes | memoryview) -> Iterator[memoryview]:
        view = memoryview(data)
        if len(view) <= self.params.min_size:
            if len(view):
                yield view
            return
        for chunk in self._cdc().cut_buf(view):
            yield chunk.data

    def split_file(self, fd: int, size_hint: int) -> Iterator[memoryview]:
        """Chunks of an open file, read into this thread's reused buffer. Each view is valid
        only until the next one is produced.

        Why not ``cut_stream``: it allocates a fresh buffer of twice the largest chunk per
        file and moves its unread half to the front with the GIL held, about once per byte
        read; here the buffer is reused and only the last, unfinished chunk of a full buffer
        is moved. Cut points are the same: a cut found before the end of the buffered bytes
        does not depend on what follows, and a chunk that reaches the end of a full buffer
        is cut again once more has been read."""
        buf = self._buffer()
        capacity = len(buf)
        filled = total = 0
        eof = False
        # At first ask for one byte more than lstat saw: a file of that length comes back
        # short, which means EOF with no second read to see it (a file that grew is read on).
        want = size_hint + 1 if size_hint < capacity else capacity
        while True:
            while filled < want:
                asked = want - filled
                n = os.readv(fd, [buf[filled:want]])
                filled += n
                total += n
                if not n or (n < asked and total == size_hint):
                    eof = True
                    break
            want = capacity
            if eof:
                yield from self.split(buf[:filled])
                return
            done = 0
            for chunk in self._cdc().cut_buf(buf[:filled]):
                end = done + len(chunk.data)
                if end == filled:
                    break  # may end early only because the buffer does: cut it again
                yield chunk.data
                done = end
            buf[: filled - done] = buf[done:filled]
            filled -= done

    def _buffer(self) -> memoryview:
        buf: memoryview | None = getattr(self._local, "buffer", None)
        if buf is None:
            # Larger than the largest chunk, so a full buffer always holds a finished one.
            size = self.params.max_size + self.read_ahead
            buf = self._local.buffer = memoryview(bytearray(size))
        return buf
