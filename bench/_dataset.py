"""The benchmark's seeded data set: text, source code, incompressible media, duplicates.

``generate`` writes ~``size_mb`` MB in ~``files`` files; ``mutate`` changes ~1 % of the files,
adds and removes a few. Both are deterministic for a given seed.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "her",
    "she",
    "there",
    "been",
    "one",
    "all",
    "we",
    "their",
    "has",
    "would",
    "when",
    "if",
    "so",
    "no",
    "will",
    "backup",
    "restore",
    "device",
    "policy",
    "user",
    "quarterly",
    "report",
    "budget",
    "meeting",
    "server",
    "network",
    "customer",
    "invoice",
    "project",
    "schedule",
    "review",
    "draft",
    "final",
    "version",
    "contract",
    "summary",
    "analysis",
    "forecast",
]
_IDENTS = [
    "user",
    "item",
    "data",
    "value",
    "result",
    "index",
    "count",
    "buffer",
    "config",
    "handler",
    "request",
    "node",
]


def _text(rng: random.Random, n: int) -> bytes:
    out: list[str] = []
    size = 0
    while size < n:
        line = " ".join(rng.choices(_WORDS, k=rng.randint(6, 16))).capitalize() + ".\n"
        out.append(line)
        size += len(line)
    return "".join(out).encode()[:n]


def _code(rng: random.Random, n: int) -> bytes:
    out: list[str] = []
    size = 0
    while size < n:
        a, b = rng.choice(_IDENTS), rng.choice(_IDENTS)
        k = rng.randint(0, 9999)
        block = (
            f"def {a}_{b}_{k}({a}, {b}=None):\n"
            f"    if {a} is None:\n        return {rng.randint(0, 99)}\n"
            f"    for i in range(len({b} or [])):\n        {a} += {b}[i] * {k}\n"
            f"    return {a}\n\n"
        )
        out.append(block)
        size += len(block)
    return "".join(out).encode()[:n]


def _media(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def generate(root: Path, *, size_mb: int, files: int, seed: int = 1) -> None:
    """Write the data set under ``root`` (replacing what is there)."""
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(seed)
    total = size_mb * 1024 * 1024
    dirs = [root / f"proj{i // 25:02d}" / f"dir{i:03d}" for i in range(max(1, files // 50))]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    n_media = max(1, files * 3 // 100)
    n_dup = files * 5 // 100
    n_small = files - n_media - n_dup
    # Text and code average ~16 KB; media takes the rest of the byte budget, heavy-tailed.
    small_budget = min(total * 35 // 100, n_small * 16 * 1024)
    media_budget = total - small_budget - total // 10
    weights = [rng.paretovariate(1.2) for _ in range(n_media)]
    scale = media_budget / sum(weights)
    written: list[Path] = []
    for i in range(n_small):
        d = rng.choice(dirs)
        n = max(0, int(rng.expovariate(1 / (small_budget / n_small))))
        if i % 2:
            path, data = d / f"mod_{i}.py", _code(rng, n)
        else:
            path, data = d / f"notes_{i}.txt", _text(rng, n)
        path.write_bytes(data)
        written.append(path)
    for i, w in enumerate(weights):
        path = rng.choice(dirs) / f"media_{i}.jpg"
        path.write_bytes(_media(rng, min(int(w * scale), 64 * 1024 * 1024)))
        written.append(path)
    budget = total // 10
    for i in range(n_dup):
        src = rng.choice(written)
        if src.stat().st_size > budget:
            src = rng.choice(written[:n_small])
        budget -= src.stat().st_size
        shutil.copyfile(src, rng.choice(dirs) / f"copy_{i}_{src.name}")


def mutate(root: Path, *, seed: int = 2) -> None:
    """Change 1 % of the files (edit in the middle or append), add 0.5 %, remove 0.5 %."""
    rng = random.Random(seed)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for path in rng.sample(files, max(1, len(files) // 100)):
        data = bytearray(path.read_bytes())
        if data and rng.random() < 0.5:
            pos = rng.randrange(len(data))
            data[pos : pos + 100] = rng.randbytes(100)
        else:
            data += _text(rng, rng.randint(100, 20_000))
        path.write_bytes(bytes(data))
    for path in rng.sample(files, max(1, len(files) // 200)):
        path.unlink(missing_ok=True)
    dirs = sorted({p.parent for p in files})
    for i in range(max(1, len(files) // 200)):
        (rng.choice(dirs) / f"new_{i}.txt").write_bytes(_text(rng, rng.randint(100, 50_000)))


def tree_bytes(root: Path) -> tuple[int, int]:
    n = size = 0
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            n += 1
            size += os.lstat(os.path.join(dirpath, f)).st_size
    return n, size
