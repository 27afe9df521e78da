"""Device replacement: link a new device to the one it replaces and plan the restore.

The plan maps the old device's user-profile paths to the new device's, across operating
systems (``C:\\Users\\ann\\Documents`` → ``/Users/ann/Documents``). Anything that has no
counterpart on the new system (other drives, Windows AppData on a Mac …) is sent to a restore
folder in the new home, keeping its full original path below it. The agent applies the plan's
rules when the restore runs; this module only decides them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetkeep.audit.service import Actor, record
from fleetkeep.deployment.devices import retire
from fleetkeep.deployment.models import Device, Platform, RestorePlan, RestoreScope
from fleetkeep.errors import NotFound

RESTORE_FOLDER = "fleetkeep-restore"

# Known user folders: name on Windows/Linux → name on each platform where it differs.
DATA_FOLDERS: dict[str, dict[Platform, str]] = {
    "Desktop": {},
    "Documents": {},
    "Downloads": {},
    "Pictures": {},
    "Music": {},
    "Videos": {Platform.MACOS: "Movies"},
}
# Application settings: only meaningful on the same operating system.
SYSTEM_FOLDERS: dict[Platform, str] = {
    Platform.WINDOWS: "AppData\\Roaming",
    Platform.MACOS: "Library/Preferences",
    Platform.LINUX: ".config",
}
DESKTOP = (Platform.WINDOWS, Platform.MACOS, Platform.LINUX)


@dataclass(frozen=True)
class Home:
    platform: Platform
    path: str

    @property
    def sep(self) -> str:
        return "\\" if self.platform is Platform.WINDOWS else "/"

    def join(self, *parts: str) -> str:
        tail = self.sep.join(p.replace("/", self.sep).replace("\\", self.sep) for p in parts)
        return self.path.rstrip(self.sep) + self.sep + tail


def default_home(platform: Platform, os_username: str) -> str:
    name = os_username or "user"
    return {
        Platform.WINDOWS: f"C:\\Users\\{name}",
        Platform.MACOS: f"/Users/{name}",
        Platform.LINUX: f"/home/{name}",
        Platform.ANDROID: "/storage/emulated/0",
        Platform.IOS: "/var/mobile/Documents",
    }[platform]


def home_of(device: Device) -> Home:
    username = device.os_username or _local_part(device.user.email)
    return Home(device.platform, device.home_dir or default_home(device.platform, username))


def plan_paths(old: Home, new: Home, scope: RestoreScope, old_device_name: str) -> dict[str, Any]:
    """The restore plan: which old paths to restore, and rules for where each lands.

    Rules are (from, to) prefixes, longest first; the agent applies the first that matches and
    sends anything else to ``unmapped_to`` + the full old path.
    """
    unmapped = new.join(RESTORE_FOLDER, _safe_name(old_device_name))
    include: list[str] = []
    rules: list[dict[str, str]] = []
    mobile = old.platform not in DESKTOP or new.platform not in DESKTOP
    if scope in (RestoreScope.ALL, RestoreScope.DATA):
        for folder, renamed in DATA_FOLDERS.items():
            source = old.join(renamed.get(old.platform, folder))
            include.append(source)
            if not mobile:
                rules.append({"from": source, "to": new.join(renamed.get(new.platform, folder))})
    if scope in (RestoreScope.ALL, RestoreScope.SYSTEM) and old.platform in SYSTEM_FOLDERS:
        source = old.join(SYSTEM_FOLDERS[old.platform])
        include.append(source)
        if old.platform is new.platform:
            rules.append({"from": source, "to": new.join(SYSTEM_FOLDERS[new.platform])})
        else:
            # Another OS's settings must not land in the new home: park them explicitly.
            kept = [p.rstrip(":") for p in re.split(r"[\\/]+", source) if p]
            rules.append(
                {"from": source, "to": new.join(RESTORE_FOLDER, _safe_name(old_device_name), *kept)}
            )
    if scope is RestoreScope.ALL:
        include.append(old.path)
        if not mobile:
            rules.append({"from": old.path, "to": new.path})
    rules.sort(key=lambda rule: len(rule["from"]), reverse=True)
    return {
        "scope": str(scope),
        "source_platform": str(old.platform),
        "target_platform": str(new.platform),
        "source_home": old.path,
        "target_home": new.path,
        "include": include,
        "rules": rules,
        "unmapped_to": unmapped,
        "case_insensitive_source": old.platform is Platform.WINDOWS,
    }


def link_replacement(
    session: Session, actor: Actor, old: Device, new: Device, scope: RestoreScope
) -> RestorePlan:
    """``new`` takes ``old``'s place: ``old`` stops backing up, ``new`` gets a restore plan."""
    new.replaces_id = old.id
    old.replaced_by_id = new.id
    retire(session, actor, old, "device.replaced")
    plan = RestorePlan(
        device_id=new.id,
        source_device_id=old.id,
        scope=scope,
        plan={
            "source_device_id": old.id,
            **plan_paths(home_of(old), home_of(new), scope, old.name),
        },
    )
    session.add(plan)
    session.flush()
    record(
        session,
        actor,
        "device.replace",
        "device",
        new.id,
        after={"replaces": old.id, "scope": str(scope), "restore_plan": plan.id},
    )
    return plan


def restore_plan_of(session: Session, device_id: int) -> RestorePlan:
    plan = session.scalar(select(RestorePlan).where(RestorePlan.device_id == device_id))
    if plan is None:
        raise NotFound(f"device {device_id} has no restore plan", code="no_restore_plan")
    return plan


def _local_part(email: str) -> str:
    return email.partition("@")[0]


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "old-device"
