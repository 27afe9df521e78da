"""Device replacement: the new device is linked, the old one stops, a restore plan maps paths."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleetkeep.agent.restoreplan import map_path
from fleetkeep.deployment.models import Platform, RestoreScope
from fleetkeep.deployment.replacement import Home, plan_paths
from tests.deployment.conftest import Org, device_call

WIN = Home(Platform.WINDOWS, "C:\\Users\\ann")
MAC = Home(Platform.MACOS, "/Users/ann")
LINUX = Home(Platform.LINUX, "/home/ann")


def test_windows_user_folders_map_to_their_mac_counterparts() -> None:
    plan = plan_paths(WIN, MAC, RestoreScope.ALL, "ANN-PC")
    assert map_path(plan, "C:\\Users\\ann\\Documents\\q3\\report.docx") == (
        "/Users/ann/Documents/q3/report.docx"
    )
    assert map_path(plan, "c:\\users\\ANN\\Videos\\trip.mp4") == "/Users/ann/Movies/trip.mp4"
    assert map_path(plan, "C:\\Users\\ann\\projects\\x.py") == "/Users/ann/projects/x.py"


def test_what_has_no_counterpart_goes_to_the_restore_folder_with_its_full_path() -> None:
    plan = plan_paths(WIN, MAC, RestoreScope.ALL, "ANN-PC")
    assert (
        map_path(plan, "D:\\data\\big.csv") == "/Users/ann/fleetkeep-restore/ANN-PC/D/data/big.csv"
    )
    # Windows application settings mean nothing on a Mac.
    assert map_path(plan, "C:\\Users\\ann\\AppData\\Roaming\\app\\x.ini").startswith(
        "/Users/ann/fleetkeep-restore/ANN-PC/"
    )


def test_system_settings_map_only_between_the_same_operating_system() -> None:
    same = plan_paths(LINUX, Home(Platform.LINUX, "/home/ann2"), RestoreScope.SYSTEM, "old")
    assert map_path(same, "/home/ann/.config/app/x") == "/home/ann2/.config/app/x"
    assert same["include"] == ["/home/ann/.config"]


def test_data_scope_restores_only_user_folders_and_mac_to_windows_uses_backslashes() -> None:
    plan = plan_paths(MAC, WIN, RestoreScope.DATA, "MAC")
    assert "/Users/ann/Library/Preferences" not in plan["include"]
    assert "/Users/ann/Movies" in plan["include"]
    assert map_path(plan, "/Users/ann/Movies/a.mov") == "C:\\Users\\ann\\Videos\\a.mov"


@given(
    st.lists(
        st.text(alphabet=st.characters(blacklist_characters="\\/:\x00"), min_size=1, max_size=8),
        min_size=1,
        max_size=5,
    )
)
def test_every_path_under_the_old_home_lands_under_the_new_home(parts: list[str]) -> None:
    plan = plan_paths(WIN, LINUX, RestoreScope.ALL, "PC")
    mapped = map_path(plan, "C:\\Users\\ann\\" + "\\".join(parts))
    assert mapped.startswith("/home/ann/")
    assert mapped.endswith(parts[-1])


def test_an_admin_marked_device_is_replaced_by_the_users_next_device(org: Org) -> None:
    org.user("ann@example.com")
    old = org.activate(
        email="ann@example.com", hostname="ANN-PC", serial_number="A", os_username="ann"
    )
    r = org.client.post(f"/api/v1/devices/{old['device_id']}/replace", json={"restore": "ALL"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "pending-replacement"
    # The old device keeps working until its replacement arrives.
    assert (
        device_call(org.client, "POST", "/device/v1/heartbeat", old["device_token"]).status_code
        == 200
    )
    new = org.activate(
        email="ann@example.com",
        hostname="ANN-MAC",
        serial_number="B",
        platform="macos",
        os_username="ann",
    )
    assert new["restore_plan"] is True
    r = device_call(org.client, "POST", "/device/v1/heartbeat", old["device_token"])
    assert r.status_code == 401
    assert r.json()["reason"] == "device_decommissioned"
    r = device_call(org.client, "GET", "/device/v1/restore-plan", new["device_token"])
    assert r.status_code == 200, r.text
    plan = r.json()
    assert plan["source_device_id"] == old["device_id"]
    assert plan["plan"]["target_home"] == "/Users/ann"
    assert map_path(plan["plan"], "C:\\Users\\ann\\Desktop\\n.txt") == "/Users/ann/Desktop/n.txt"
    # The old device's serial is free again; a device without a plan gets a clear 404.
    r = device_call(org.client, "GET", "/device/v1/restore-plan", old["device_token"])
    assert r.status_code == 401
    third = org.activate(email="ann@example.com", hostname="X", serial_number="C")
    r = device_call(org.client, "GET", "/device/v1/restore-plan", third["device_token"])
    assert r.json()["code"] == "no_restore_plan"


def test_a_reimaged_device_marked_for_replacement_replaces_its_former_self(org: Org) -> None:
    org.user("ann@example.com")
    old = org.activate(email="ann@example.com", hostname="ANN-PC", serial_number="SAME")
    org.client.post(f"/api/v1/devices/{old['device_id']}/replace", json={"restore": "SYSTEM"})
    new = org.activate(email="ann@example.com", hostname="ANN-PC", serial_number="SAME")
    assert new["device_id"] != old["device_id"]
    assert new["restore_plan"] is True
    states = {d["id"]: d["state"] for d in org.devices()}
    assert states == {old["device_id"]: "decommissioned", new["device_id"]: "active"}
