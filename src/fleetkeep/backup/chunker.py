"""Content-defined chunking (FastCDC 2020, via the Cython ``pyfastcdc``).

Cut points depend on content, so an insertion shifts only the chunks around it. The gear table
is XORed with a per-repository secret seed, so chunk lengths do not fingerprint known files.
``pyfastcdc`` releases the GIL while it scans, so threads chunk in parallel.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from pyfastcdc import FastCDC

# Chosen from the measurement in docs/repository-format.md ("Choosing the chunk size").
DEFAULT_MIN = 512 * 1024
DEFAULT_AVG = 1024 * 1024
DEFAULT_MAX = 8 * 1024 * 1024


@dataclass(frozen=True)
class ChunkerParams:
    min_size: int = DEFAULT_MIN
    avg_size: int = DEFAULT_AVG
    max_size: int = DEFAULT_MAX
    seed: int = 0


class Chunker:
    def __init__(self, params: ChunkerParams) -> None:
        self.params = params
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
        """Chunks of an open file. Each view is valid only until the next one is produced."""
        if size_hint <= self.params.max_size:
            # Ask for one byte more than expected so a file that grew is still read whole.
            head = os.read(fd, size_hint + 1)
            # Exactly the size lstat saw: the whole file (asked for one byte more, it did not
            # grow), with no second read to see EOF. Fewer bytes may be a short read.
            if len(head) < size_hint:
                while True:  # short reads are legal; read until EOF or past the hint
                    more = os.read(fd, size_hint + 1 - len(head))
                    if not more:
                        break
                    head += more
                    if len(head) > size_hint:
                        break
            if len(head) <= size_hint:
                yield from self.split(head)
                return
            stream: io.RawIOBase = _Prefixed(head, fd)
        else:
            stream = io.FileIO(fd, closefd=False)
        for chunk in self._cdc().cut_stream(stream):
            yield chunk.data


class _Prefixed(io.RawIOBase):
    """Bytes already read, followed by the rest of the file."""

    def __init__(self, head: bytes, fd: int) -> None:
        self._head = memoryview(head)
        self._fd = fd

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return os.readv(self._fd, [b])
