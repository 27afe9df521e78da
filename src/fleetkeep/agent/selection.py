"""What a backup covers: the profile policy's folders and exclude globs, with per-OS defaults.

Policy keys (all optional)::

    {"folders": ["~/Documents", "~/Desktop", "~/Projects/*"],   # default: the home folder
     "exclude": ["*.iso", "*/build"],                           # added to the defaults
     "default_excludes": true}                                  # false: only "exclude"

``~`` and environment variables expand, glob patterns in folders expand to what exists.
Excludes are shell globs matched against a file's full path and against its name.
"""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Caches, trash, temporary and rebuildable files: never worth a user's quota.
DEFAULT_EXCLUDES: dict[str, list[str]] = {
    "linux": [
        "*/.cache",
        "*/.local/share/Trash",
        "*/.thumbnails",
        "*/node_modules",
        "*/__pycache__",
        "*.tmp",
        "*.swp",
    ],
    "macos": [
        "*/Library/Caches",
        "*/Library/Logs",
        "*/.Trash",
        "*/node_modules",
        ".DS_Store",
        "*.tmp",
    ],
    "windows": [
        "*/AppData/Local/Temp",
        "*/AppData/Local/Microsoft/Windows/INetCache",
        "*/$Recycle.Bin",
        "*/node_modules",
        "Thumbs.db",
        "desktop.ini",
        "~$*",
        "*.tmp",
    ],
}
PLATFORMS = {"win32": "windows", "darwin": "macos"}


@dataclass(frozen=True)
class Selection:
    paths: list[str]
    excludes: list[str]


def current_platform() -> str:
    return os.environ.get("FLEETKEEP_PLATFORM") or PLATFORMS.get(sys.platform, "linux")


def _expand(pattern: str, home: Path) -> list[str]:
    text = os.path.expandvars(pattern)
    if text == "~" or text.startswith(("~/", "~\\")):
        text = str(home) + text[1:]
    if glob.has_magic(text):
        return sorted(glob.glob(text))
    return [text] if os.path.exists(text) else []


def backup_selection(
    policy: dict[str, Any],
    *,
    home: Path | None = None,
    platform: str | None = None,
    never: list[Path] | None = None,
) -> Selection:
    """Existing folders to back up and the exclude globs; ``never`` (the agent's own state
    directory) is always excluded."""
    home = home or Path.home()
    platform = platform or current_platform()
    folders = [str(f) for f in policy.get("folders") or ["~"]]
    paths = sorted({p for f in folders for p in _expand(f, home)})
    excludes: list[str] = []
    if policy.get("default_excludes", True):
        excludes += DEFAULT_EXCLUDES.get(platform, DEFAULT_EXCLUDES["linux"])
    excludes += [str(e) for e in policy.get("exclude") or []]
    excludes += [str(p) for p in never or []]
    return Selection(paths, excludes)
