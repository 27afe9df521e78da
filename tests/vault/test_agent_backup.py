"""Real ``fleetkeep-agent`` processes backing up to and restoring from a real server."""

from __future__ import annotations

import itertools
import json
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.backup.trees import describe
from tests.support.servers import ServerProcess, run_cli
from tests.support.waits import wait_for
from tests.vault.agents import (
    assert_nothing_resent,
    make_tree,
    new_agent,
    random_tree,
    setup_org,
)


def test_backup_restores_byte_identical_and_an_unchanged_rebackup_uploads_nothing(
    shared_server: ServerProcess, tmp_path: Path
) -> None:
    server = shared_server
    org = setup_org(server, f"file://{tmp_path / 'blobs'}", tag="-restore")
    user = org.user("ann@example.com")
    ann = new_agent(tmp_path, server, org, "ann@example.com", "ANN-PC")
    make_tree(ann.home)

    first = ann.ok("backup")
    assert "snapshot" in first, first
    again = ann.ok("backup")
    assert_nothing_resent(again)

    status = json.loads(ann.ok("status", "--json"))
    listed = json.loads(ann.ok("snapshots", "--json"))
    assert status["last_snapshot"] == listed[0]["snapshot_id"]
    assert status["last_error"] is None
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

    mine = {"user_id": user}
    catalogue = org.admin.get("/api/v1/snapshots", params=mine).json()["items"]
    assert [s["snapshot_id"] for s in catalogue] == [s["snapshot_id"] for s in listed]
    sessions = org.admin.get("/api/v1/backup-sessions", params=mine).json()["items"]
    assert [s["state"] for s in sessions] == ["committed", "committed"]
    [device] = org.admin.get("/api/v1/devices", params=mine).json()["items"]
    assert device["last_backup_at"] is not None
    cli = run_cli(["snapshots", "list", "--user", "ann@example.com", "--json"], server.env)
    assert [s["snapshot_id"] for s in json.loads(cli.stdout)] == [s["snapshot_id"] for s in listed]
    table = run_cli(["snapshots", "list", "--device", "ANN-PC"], server.env).stdout
    assert listed[0]["snapshot_id"][:12] in table


def test_a_restore_spanning_several_packs_is_byte_identical(
    shared_server: ServerProcess, tmp_path: Path
) -> None:
    # Three ~16 MiB packs: the agent fetches each whole, ahead of the writers, and serves
    # every window and large blob of the restore as a slice of it.
    org = setup_org(shared_server, f"file://{tmp_path / 'blobs'}", tag="-packs")
    user = org.user("pat@example.com")
    pat = new_agent(tmp_path, shared_server, org, "pat@example.com", "PAT-PC")
    random_tree(pat.home, files=7, size=6_000_000, seed=11)
    pat.ok("backup", "--quiet")
    packs = list((tmp_path / "blobs" / "users" / str(user) / "packs").rglob("*"))
    assert len([p for p in packs if p.is_file()]) >= 3
    out = tmp_path / "restored"
    pat.ok("restore", "--target", str(out))
    assert describe(out / pat.home.relative_to("/")) == describe(pat.home)


def test_over_quota_the_agent_fails_clearly_an_alert_is_raised_and_no_snapshot_exists(
    shared_server: ServerProcess, tmp_path: Path
) -> None:
    server = shared_server
    org = setup_org(server, f"file://{tmp_path / 'blobs'}", tag="-quota")
    user = org.user("quinn@example.com", quota={"value": 1, "unit": "MB"})
    ann = new_agent(tmp_path, server, org, "quinn@example.com", "QUINN-PC")
    random_tree(ann.home, files=2, size=1_000_000, seed=1)
    failed = ann.run("backup", "--quiet")
    assert failed.returncode == 3, failed.stderr
    assert "[quota_exceeded]" in failed.stderr
    assert "quinn@example.com has used" in failed.stderr
    alerts = org.admin.get("/api/v1/alerts", params={"type": "quota_exceeded"}).json()["items"]
    assert [a["subject"] for a in alerts] == [f"user:{user}"]
    mine = {"user_id": user}
    assert org.admin.get("/api/v1/snapshots", params=mine).json()["items"] == []
    assert json.loads(ann.ok("snapshots", "--json")) == []
    [session] = org.admin.get("/api/v1/backup-sessions", params=mine).json()["items"]
    assert (session["state"], session["error_code"]) == ("failed", "quota_exceeded")


def test_the_daemon_backs_up_on_its_interval_reports_progress_and_restores_a_point_in_time(
    shared_server: ServerProcess, tmp_path: Path
) -> None:
    server = shared_server
    org = setup_org(
        server,
        f"file://{tmp_path / 'blobs'}",
        policy={"folders": ["~/Documents", "~/Missing"], "exclude": ["*.log"]},
        tag="-daemon",
    )
    user = org.user("dana@example.com")
    mine = {"user_id": user}
    ann = new_agent(tmp_path, server, org, "dana@example.com", "DANA-PC")
    make_tree(ann.home)
    (ann.home / "Documents" / "debug.log").write_text("noise")
    (ann.home / "Music").mkdir()
    (ann.home / "Music" / "song.mp3").write_bytes(b"not in the policy")
    notes = ann.home / "Documents" / "report.txt"
    daemon = ann.popen("run", "--interval", "0.5", "--backup-interval", "1")

    def snapshots() -> list[dict[str, object]]:
        found = org.admin.get("/api/v1/snapshots", params=mine)
        items: list[dict[str, object]] = found.json()["items"]
        return items

    try:
        wait_for(lambda: len(snapshots()) >= 1, "the first scheduled backup")
        first_done = time.time()
        notes.write_text("revised numbers\n")
        wait_for(lambda: len(snapshots()) >= 3, "two more scheduled backups")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.communicate()
    listed = snapshots()
    assert listed[-1]["paths"] == [str(ann.home / "Documents")]
    sessions = org.admin.get("/api/v1/backup-sessions", params=mine).json()["items"]
    assert all("files" in s["progress"] for s in sessions if s["state"] == "committed")
    # Counted from the previous finish: never two backups within the interval.
    times = sorted(datetime.fromisoformat(str(s["committed_at"])) for s in listed)
    assert all((b - a).total_seconds() >= 1 for a, b in itertools.pairwise(times))

    out = tmp_path / "then"
    at = datetime.fromtimestamp(first_done, UTC).isoformat()
    ann.ok("restore", "--target", str(out), "--at", at, "--path", str(notes))
    restored = out / notes.relative_to("/")
    assert restored.read_text() == "quarterly numbers\n" * 3000
    assert sorted(p.name for p in restored.parent.iterdir()) == ["report.txt"]
    everything = tmp_path / "now"
    ann.ok("restore", "--target", str(everything))
    docs = everything / (ann.home / "Documents").relative_to("/")
    assert (docs / "report.txt").read_text() == "revised numbers\n"
    assert not (docs / "debug.log").exists()
    assert not (everything / (ann.home / "Music").relative_to("/")).exists()
