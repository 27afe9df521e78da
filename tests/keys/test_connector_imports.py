"""The key connector runs on customer boxes: it must not drag the server in."""

from __future__ import annotations

import subprocess
import sys


def test_the_connector_loads_no_server_code() -> None:
    probe = (
        "import sys, fleetkeep.connector.cli; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('sqlalchemy', 'fastapi', 'starlette', 'alembic', 'boto3') or "
        "m.startswith(('fleetkeep.keys.service', 'fleetkeep.web', 'fleetkeep.db'))]; "
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
