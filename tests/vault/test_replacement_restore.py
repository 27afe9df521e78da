"""A replacement device executes its restore plan: the old device's latest backup comes back
with folders mapped to the new system and other platforms' settings parked aside."""

from __future__ import annotations

from pathlib import Path

from tests.support.servers import ServerProcess
from tests.vault.agents import new_agent, setup_org


def test_a_new_device_restores_the_replaced_devices_data_to_mapped_folders(
    server: ServerProcess, tmp_path: Path
) -> None:
    org = setup_org(server, f"file://{tmp_path / 'blobs'}")
    org.user("ann@example.com")
    old = new_agent(
        tmp_path, server, org, "ann@example.com", "ANN-PC", FLEETKEEP_PLATFORM="windows"
    )
    files = {
        "Documents/report.txt": "old report",
        "Videos/trip.mp4": "video",
        "projects/x.py": "print('x')",
        "AppData/Roaming/app/settings.ini": "[app]",
    }
    for rel, text in files.items():
        (old.home / rel).parent.mkdir(parents=True, exist_ok=True)
        (old.home / rel).write_text(text)
    old.ok("backup", "--quiet")
    old_id = old.device_id()
    r = org.admin.post(f"/api/v1/devices/{old_id}/replace", json={"restore": "ALL"})
    assert r.status_code == 200, r.text

    new = new_agent(tmp_path, server, org, "ann@example.com", "ANN-LAPTOP")
    (new.home / "Documents").mkdir()
    (new.home / "Documents" / "report.txt").write_text("already here")
    done = new.ok("restore-plan")
    assert f"of device {old_id}" in done
    assert "1 existing kept" in done

    home = new.home
    assert (home / "Documents" / "report.txt").read_text() == "already here"
    assert (home / "Documents" / "report.txt.fleetkeep-restored").read_text() == "old report"
    assert (home / "Videos" / "trip.mp4").read_text() == "video"
    assert (home / "projects" / "x.py").read_text() == "print('x')"
    # Windows settings mean nothing on Linux: parked under the restore folder, full path kept.
    parked = home / "fleetkeep-restore" / "ANN-PC" / old.home.relative_to("/")
    assert (parked / "AppData" / "Roaming" / "app" / "settings.ini").read_text() == "[app]"
    assert not (home / "AppData").exists()
    assert not [p for p in home.iterdir() if p.name.startswith(".fleetkeep-staging")]

    plan = org.admin.get(f"/api/v1/devices/{new.device_id()}/restore-plan").json()
    assert plan["status"] == "done"
    # The new device backs up its own data from now on.
    assert "snapshot" in new.ok("backup", "--quiet")
