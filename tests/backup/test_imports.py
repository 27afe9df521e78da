"""The engine is importable by the agent: it must pull in nothing from the server side."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import sys
import fleetkeep.backup, fleetkeep.backup.check, fleetkeep.backup.prune
import fleetkeep.backup.stores.fs, fleetkeep.backup.stores.s3
bad = sorted(m for m in sys.modules if m.split(".")[0] in {"sqlalchemy", "fastapi", "alembic",
    "pydantic_settings", "starlette"} or m in {"fleetkeep.db", "fleetkeep.settings"}
    or m.startswith(("fleetkeep.web", "fleetkeep.identity", "fleetkeep.models")))
print(",".join(bad))
"""


def test_backup_engine_imports_nothing_from_the_server() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""
