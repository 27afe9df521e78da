"""Real ``fleetkeep-agent`` processes backing up to and restoring from a real server."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.backup.trees import describe
from tests.support.servers import ServerProcess
from tests.vault.agents import new_agent, setup_org


def make_tree(root: Path) -> None:
    (root / "Documents" / "deep").mkdir(parents=True)
    (root / "Documents" / "report.txt").write_text("quarterly numbers\n" * 3000)
    (root / "Documents" / "deep" / "photo.raw").write_bytes(os.urandom(200_000))
    (root / "Documents" / "empty").write_bytes(b"")
    (root / "Documents" / "ünïcødé.md").write_text("names are bytes")
    os.symlink("report.txt", root / "Documents" / "latest")
    (root / ".cache").mkdir()
    (root / ".cache" / "junk.bin").write_bytes(os.urandom(50_000))


def test_backup_restores_byte_identical_and_an_unchanged_rebackup_uploads_nothing(
    server: ServerProcess, tmp_path: Path
) -> None:
    org = setup_org(server, f"file://{tmp_path / 'blobs'}")
    org.user("ann@example.com")
    ann = new_agent(tmp_path, server, org, "ann@example.com", "ANN-PC")
    make_tree(ann.home)

    first = ann.ok("backup")
    assert "snapshot" in first, first
    again = ann.ok("backup")
    assert "0 objects (0 B) uploaded" in again, again

    listed = json.loads(ann.ok("snapshots", "--json"))
    assert len(listed) == 2
    assert listed[0]["file_count"] == listed[1]["file_count"] == 4
    out = tmp_path / "restored"
    ann.ok("restore", "--target", str(out))
    restored = out / ann.home.relative_to("/")
    # The default excludes keep caches out.
    assert not (restored / ".cache").exists()
    (ann.home / ".cache" / "junk.bin").unlink()
    (ann.home / ".cache").rmdir()
    assert describe(restored) == describe(ann.home)

    catalogue = org.admin.get("/api/v1/snapshots").json()["items"]
    assert [s["snapshot_id"] for s in catalogue] == [s["snapshot_id"] for s in listed]
    sessions = org.admin.get("/api/v1/backup-sessions").json()["items"]
    assert [s["state"] for s in sessions] == ["committed", "committed"]
