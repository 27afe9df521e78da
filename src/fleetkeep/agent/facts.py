"""What this device can say about itself at activation: names, hardware identity, OS, user.

``FLEETKEEP_HOSTNAME``, ``FLEETKEEP_SERIAL``, ``FLEETKEEP_HARDWARE_UUID`` and
``FLEETKEEP_PLATFORM`` override detection (golden images, VDI, mobile wrappers, tests); set
but empty, the serial/UUID variables mean "report none".
"""

from __future__ import annotations

import getpass
import os
import platform
import socket
import sys
from pathlib import Path

from fleetkeep import __version__

PLATFORMS = {"win32": "windows", "darwin": "macos"}


def _first_readable(*paths: str) -> str:
    for path in paths:
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value:
            return value
    return ""


def _override(variable: str, *paths: str) -> str:
    """The variable when set (even empty: cloned images must not report a shared id)."""
    value = os.environ.get(variable)
    return value.strip() if value is not None else _first_readable(*paths)


def device_facts() -> dict[str, str]:
    env = os.environ
    return {
        "hostname": env.get("FLEETKEEP_HOSTNAME") or socket.gethostname(),
        "platform": env.get("FLEETKEEP_PLATFORM") or PLATFORMS.get(sys.platform, "linux"),
        "serial_number": _override("FLEETKEEP_SERIAL", "/sys/class/dmi/id/product_serial"),
        "hardware_uuid": _override(
            "FLEETKEEP_HARDWARE_UUID", "/sys/class/dmi/id/product_uuid", "/etc/machine-id"
        ),
        "os": platform.platform(),
        "agent_version": __version__,
        "os_username": getpass.getuser(),
        "home_dir": str(Path.home()),
    }
