"""The agent's state directory and the stored device credentials (one file, mode 0600).

``FLEETKEEP_AGENT_DIR`` overrides the per-OS default. The device token is the only secret the
agent keeps; it is written with ``O_CREAT | 0600`` (never world-readable, not even briefly) and
replaced atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "device.json"


def agent_dir() -> Path:
    explicit = os.environ.get("FLEETKEEP_AGENT_DIR")
    if explicit:
        return Path(explicit)
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "fleetkeep-agent"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "fleetkeep-agent"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fleetkeep-agent"


@dataclass
class Enrollment:
    """What activation gave this device."""

    server: str
    device_id: int
    device_token: str = field(repr=False)
    mode: str
    activated_at: str
    config: dict[str, Any] = field(default_factory=dict)


def load(directory: Path | None = None) -> Enrollment | None:
    path = (directory or agent_dir()) / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return Enrollment(**data)


def save(enrollment: Enrollment, directory: Path | None = None) -> Path:
    directory = directory or agent_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(enrollment), handle, indent=2)
    os.replace(tmp, path)
    return path


def wipe(directory: Path | None = None, *, everything: bool = False) -> None:
    """Forget the device token; ``everything`` also removes all local state (mobile wipe)."""
    directory = directory or agent_dir()
    if everything:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        (directory / STATE_FILE).unlink(missing_ok=True)
