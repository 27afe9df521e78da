"""Sizes for people: shared by the admin CLI and the agent, so it imports nothing."""

from __future__ import annotations


def format_bytes(n: int) -> str:
    """``512 B``, ``1.5 KB``, ``3.2 GB`` (binary multiples, as file managers show them)."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"
