"""How the FastCDC average size trades dedup against chunk count on the benchmark data set.

For each candidate size: chunks and unique bytes of the data set, and the new bytes a backup
of the 1 %-mutated data set must store. Fewer chunks mean a smaller index and less per-chunk
work; smaller chunks mean less data re-sent per edit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import _dataset
import blake3

from fleetkeep.backup.chunker import Chunker, ChunkerParams

CANDIDATES = [
    ChunkerParams(min_size=64 * 1024, avg_size=256 * 1024, max_size=2 * 1024 * 1024, seed=1),
    ChunkerParams(min_size=256 * 1024, avg_size=512 * 1024, max_size=4 * 1024 * 1024, seed=1),
    ChunkerParams(min_size=512 * 1024, avg_size=1024 * 1024, max_size=8 * 1024 * 1024, seed=1),
    ChunkerParams(min_size=1024 * 1024, avg_size=2048 * 1024, max_size=16 * 1024 * 1024, seed=1),
]


def _chunk_ids(chunker: Chunker, root: Path) -> tuple[dict[bytes, int], int, int]:
    ids: dict[bytes, int] = {}
    count = big_count = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            fd = os.open(path, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                for chunk in chunker.split_file(fd, size):
                    ids[blake3.blake3(chunk).digest()] = len(chunk)
                    count += 1
                    big_count += size > chunker.params.max_size
            finally:
                os.close(fd)
    return ids, count, big_count


def survey(data_dir: Path, size_mb: int, files: int) -> None:
    pristine = data_dir / f"pristine-{size_mb}mb-{files}f"
    if not (pristine / ".complete").exists():
        _dataset.generate(pristine, size_mb=size_mb, files=files)
        (pristine / ".complete").touch()
    mutated = data_dir / "survey-mutated"
    shutil.rmtree(mutated, ignore_errors=True)
    subprocess.run(["cp", "-a", str(pristine), str(mutated)], check=True)
    _dataset.mutate(mutated)
    n, size = _dataset.tree_bytes(pristine)
    print(f"data set: {n} files, {size / 1e6:.0f} MB; mutation: 1 % changed, 0.5 % +/-")
    print(
        f"{'min/avg/max KiB':>22}{'chunks':>9}{'mean KiB':>10}{'unique MB':>11}"
        f"{'new after mutation MB':>23}{'chunk MB/s':>12}"
    )
    for p in CANDIDATES:
        chunker = Chunker(p)
        t = time.perf_counter()
        before, count, _ = _chunk_ids(chunker, pristine)
        elapsed = time.perf_counter() - t
        after, _, _ = _chunk_ids(chunker, mutated)
        new = sum(v for k, v in after.items() if k not in before)
        label = f"{p.min_size >> 10}/{p.avg_size >> 10}/{p.max_size >> 10}"
        mean = sum(before.values()) / max(1, len(before)) / 1024
        print(
            f"{label:>22}{count:>9}{mean:>10.0f}{sum(before.values()) / 1e6:>11.1f}"
            f"{new / 1e6:>23.1f}{size / elapsed / 1e6:>12.0f}"
        )
    shutil.rmtree(mutated)
