"""Applying a replacement restore plan: where a file of the old device lands on this one.

The server decides the rules (``fleetkeep.deployment.replacement``); the first rule whose
``from`` prefix matches wins (they come longest first), anything else goes below
``unmapped_to`` with its whole old path kept (the drive letter becomes a folder).
"""

from __future__ import annotations

import re
from typing import Any

_SPLIT = re.compile(r"[\\/]+")


def _parts(path: str) -> list[str]:
    return [p for p in _SPLIT.split(path) if p]


def map_path(plan: dict[str, Any], old_path: str) -> str:
    target_sep = "\\" if plan["target_platform"] == "windows" else "/"
    fold = bool(plan.get("case_insensitive_source"))
    parts = _parts(old_path)
    compare = [p.lower() for p in parts] if fold else parts
    for rule in plan["rules"]:
        prefix = _parts(rule["from"])
        wanted = [p.lower() for p in prefix] if fold else prefix
        if compare[: len(wanted)] == wanted:
            return _join(rule["to"], parts[len(prefix) :], target_sep)
    kept = [p.rstrip(":") or "root" for p in parts]
    return _join(plan["unmapped_to"], kept, target_sep)


def _join(base: str, rest: list[str], sep: str) -> str:
    return sep.join([base.rstrip("\\/"), *rest]) if rest else base
