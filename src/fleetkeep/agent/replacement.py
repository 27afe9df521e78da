"""Executing a replacement restore plan: the old device's latest backup onto this device.

The plan's ``include`` paths of the old device's latest snapshot are restored into a staging
folder next to the new home (same filesystem, so placing them is a rename), then each staged
entry moves to where :func:`fleetkeep.agent.restoreplan.map_path` sends it. An entry moves
whole as soon as no rule starts below it, since then everything inside it maps by the same
rule. A file already present where a restored one lands is kept; the restored copy goes next
to it as ``<name>.fleetkeep-restored``. The library's restore does the writing, so nothing
can land outside the staging folder; the moves only go where the server's rules say.
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetkeep.agent import state
from fleetkeep.agent.backups import NoBackups, choose_snapshot, open_repository
from fleetkeep.agent.client import DeviceClient
from fleetkeep.agent.remote import VaultApi
from fleetkeep.agent.restoreplan import map_path

CONFLICT_SUFFIX = ".fleetkeep-restored"
_SPLIT = re.compile(r"[\\/]+")


@dataclass
class ReplacementReport:
    snapshot: str
    placed: int = 0
    conflicts: int = 0
    files: int = 0


def _parts(path: str) -> list[str]:
    return [p for p in _SPLIT.split(path) if p]


def _snapshot_path(path: str) -> str:
    """A plan path (either separator) as the snapshot names it: absolute, with ``/``."""
    return "/" + "/".join(_parts(path))


class _Placer:
    def __init__(self, plan: dict[str, Any], report: ReplacementReport) -> None:
        self.plan = plan
        self.report = report
        self._fold = bool(plan.get("case_insensitive_source"))
        self._rules = [self._key(_parts(r["from"])) for r in plan["rules"]]

    def _key(self, parts: list[str]) -> list[str]:
        return [p.lower() for p in parts] if self._fold else parts

    def _rule_below(self, parts: list[str]) -> bool:
        key = self._key(parts)
        return any(len(r) > len(key) and r[: len(key)] == key for r in self._rules)

    def place(self, staged: Path, parts: list[str]) -> None:
        """Move ``staged`` (old path ``parts``) to its new place, descending while a rule
        starts deeper inside it."""
        if staged.is_dir() and not staged.is_symlink() and self._rule_below(parts):
            for child in sorted(staged.iterdir()):
                self.place(child, [*parts, child.name])
            return
        target = Path(map_path(self.plan, "/" + "/".join(parts)))
        _merge(staged, target, self.report)
        self.report.placed += 1


def _merge(src: Path, dst: Path, report: ReplacementReport) -> None:
    if not os.path.lexists(dst):
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, dst)
        return
    if src.is_dir() and not src.is_symlink() and dst.is_dir() and not dst.is_symlink():
        for child in sorted(src.iterdir()):
            _merge(child, dst / child.name, report)
        src.rmdir()
        return
    report.conflicts += 1
    aside = dst.with_name(dst.name + CONFLICT_SUFFIX)
    if os.path.lexists(aside):
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside)
        else:
            aside.unlink()
    os.rename(src, aside)


def execute_plan(enrollment: state.Enrollment) -> tuple[dict[str, Any], ReplacementReport]:
    """Restore the old device's data per this device's plan; tells the server the outcome.

    Raises ``ServerRefused`` (``no_restore_plan`` when this device replaces none) and
    ``NoBackups`` when the old device never completed a backup.
    """
    with DeviceClient(enrollment.server, enrollment.device_token) as client, ExitStack() as stack:
        doc = client.restore_plan()
        plan: dict[str, Any] = doc["plan"]
        api = VaultApi(client)
        try:
            repo = stack.enter_context(open_repository(client))
            snap = choose_snapshot(repo, device_id=doc["source_device_id"])
        except NoBackups as exc:
            api.restore_plan_status("failed", str(exc))
            raise
        report = ReplacementReport(snapshot=snap.id)
        home = Path(plan["target_home"])
        staging = home / f".fleetkeep-staging-{doc['id']}"
        shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted attempt
        include = [_snapshot_path(p) for p in plan["include"]]
        stats = repo.restore(snap, staging, include)
        report.files = stats.files
        placer = _Placer(plan, report)
        for top in sorted(staging.iterdir()):
            placer.place(top, [top.name])
        shutil.rmtree(staging, ignore_errors=True)
        api.restore_plan_status(
            "done",
            f"snapshot {snap.id[:12]}: {stats.files} files, {report.conflicts} kept aside",
        )
    return doc, report
