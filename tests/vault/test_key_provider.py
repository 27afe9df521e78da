"""With the organization key behind a key connector that is away, a backup is refused
cleanly (``key_provider_not_connected``, "try later"), and succeeds once it is back."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.connectors import (
    ConnectorProcess,
    connected,
    connector_token,
    new_key_file,
)
from tests.support.servers import ServerProcess
from tests.support.waits import wait_for
from tests.vault.agents import new_agent, random_tree, setup_org

pytestmark = pytest.mark.slow

EXIT_TRY_LATER = 6


def test_without_a_connected_key_provider_the_backup_fails_cleanly_and_works_when_it_returns(
    server: ServerProcess, tmp_path: Path
) -> None:
    org = setup_org(server, f"file://{tmp_path / 'blobs'}")
    key_file = new_key_file(tmp_path / "customer" / "ekey.json")
    token = connector_token(org.admin)
    connector = ConnectorProcess(server, key_file, token, tmp_path / "c1.log").start()
    try:
        wait_for(connected(org.admin), "the connector to connect")
        rotated = org.admin.post("/api/v1/keys/rotate", json={"provider": "connector"})
        assert rotated.status_code == 200, rotated.text
        org.user("ann@example.com")
        ann = new_agent(tmp_path, server, org, "ann@example.com", "ANN-PC")
        random_tree(ann.home, files=2, size=100_000, seed=3)
    finally:
        connector.kill()
    wait_for(lambda: not connected(org.admin)(), "the connector to be gone")

    refused = ann.run("backup", "--quiet")
    assert refused.returncode == EXIT_TRY_LATER, refused.stderr
    assert "[key_provider_not_connected]" in refused.stderr
    assert "try again later" in refused.stderr
    assert org.admin.get("/api/v1/snapshots").json()["items"] == []
    alerts = org.admin.get("/api/v1/alerts", params={"type": "key_provider_not_connected"})
    assert alerts.json()["items"], "the outage raised no alert"

    back = ConnectorProcess(server, key_file, token, tmp_path / "c2.log").start()
    try:
        wait_for(connected(org.admin), "the connector to come back")
        assert "snapshot" in ann.ok("backup", "--quiet")
    finally:
        back.kill()
    assert len(org.admin.get("/api/v1/snapshots").json()["items"]) == 1
