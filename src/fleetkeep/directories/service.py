"""Directories and their mappings: registration, connection tests, syncs on demand and on schedule.

The bind password is sealed with the data directory's key (``credentials``) as soon as it
arrives; views and audit records never contain it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.audit.service import Actor, record
from fleetkeep.directories import ldap as ldap_source
from fleetkeep.directories.credentials import seal, unseal
from fleetkeep.directories.mappings import parse_rule
from fleetkeep.directories.models import (
    Directory,
    DirectoryKind,
    Mapping,
    MappingPurpose,
    SyncRun,
)
from fleetkeep.directories.sync import (
    FetchResult,
    compiled_mappings,
    confirm_sync,
    due_directories,
    run_sync,
)
from fleetkeep.errors import Conflict, InvalidInput, NotFound
from fleetkeep.identity.models import QuotaUnit, User
from fleetkeep.identity.service import get_profile, get_region

LDAP_KINDS = (DirectoryKind.AD, DirectoryKind.LDAP)
_DIRECTORY_FIELDS = {
    "name",
    "settings",
    "enabled",
    "sync_interval_hours",
    "auto_update",
    "auto_preserve",
    "hold_above_count",
    "hold_above_percent",
}
_MAPPING_FIELDS = {
    "name",
    "purpose",
    "rule",
    "profile_id",
    "storage_region_id",
    "quota_value",
    "quota_unit",
    "auto_import",
    "priority",
}


# Directories --------------------------------------------------------------------------------


def create_directory(
    session: Session,
    actor: Actor,
    data_dir: Path,
    *,
    name: str,
    kind: DirectoryKind,
    secret: str | None = None,
    **fields: Any,
) -> Directory:
    """Register a directory. AD/LDAP settings are validated and given the kind's defaults;
    other kinds keep the settings their own module validated."""
    _only(fields, _DIRECTORY_FIELDS - {"name"})
    kind = DirectoryKind(kind)
    _unique_name(session, name)
    given = fields.get("settings") or {}
    fields["settings"] = _checked_settings(kind, given)
    _check_numbers(fields)
    if kind in LDAP_KINDS:
        _verify(kind, fields["settings"], secret or "", given)
    directory = Directory(name=name, kind=kind, **fields)
    if secret:
        directory.secret = seal(data_dir, secret)
    session.add(directory)
    session.flush()
    record(
        session,
        actor,
        "directory.create",
        "directory",
        directory.id,
        after=directory_view(directory),
    )
    return directory


def update_directory(
    session: Session,
    actor: Actor,
    data_dir: Path,
    directory_id: int,
    *,
    secret: str | None = None,
    **fields: Any,
) -> Directory:
    _only(fields, _DIRECTORY_FIELDS)
    directory = get_directory(session, directory_id)
    before = directory_view(directory)
    if "name" in fields and fields["name"] != directory.name:
        _unique_name(session, fields["name"])
    given = fields.get("settings") or {}
    if "settings" in fields:
        merged = {**directory.settings, **given}
        fields["settings"] = _checked_settings(directory.kind, merged)
    _check_numbers(fields)
    if directory.kind in LDAP_KINDS and (given or secret is not None):
        password = secret if secret is not None else _password(data_dir, directory)
        _verify(directory.kind, fields.get("settings", directory.settings), password, given)
    for key, value in fields.items():
        setattr(directory, key, value)
    if secret is not None:
        directory.secret = seal(data_dir, secret) if secret else None
    session.flush()
    after = directory_view(directory)
    if secret is not None:
        after["secret_changed"] = True
    record(
        session, actor, "directory.update", "directory", directory.id, before=before, after=after
    )
    return directory


def delete_directory(session: Session, actor: Actor, directory_id: int) -> None:
    """Refused while the directory owns users: they would lose their source."""
    directory = get_directory(session, directory_id)
    owned = session.scalar(select(func.count()).where(User.source == directory.source)) or 0
    if owned:
        raise Conflict(
            f"directory {directory.name!r} owns {owned} user(s); disable it instead",
            code="directory_in_use",
        )
    record(
        session,
        actor,
        "directory.delete",
        "directory",
        directory.id,
        before=directory_view(directory),
    )
    session.delete(directory)


def get_directory(session: Session, directory_id: int) -> Directory:
    directory = session.get(Directory, directory_id)
    if directory is None:
        raise NotFound(f"directory {directory_id} does not exist")
    return directory


def find_directory(session: Session, ref: str) -> Directory:
    """By id or by name, for the CLI."""
    found = session.get(Directory, int(ref)) if ref.isdigit() else None
    if found is None:
        found = session.scalar(select(Directory).where(Directory.name == ref))
    if found is None:
        raise NotFound(f"no directory named {ref!r}")
    return found


def list_directories(session: Session) -> list[Directory]:
    return list(session.scalars(select(Directory).order_by(Directory.id)))


def directory_view(directory: Directory) -> dict[str, Any]:
    """Everything about a directory except its secret (only whether it has one)."""
    return {
        "id": directory.id,
        "name": directory.name,
        "kind": str(directory.kind),
        "settings": directory.settings,
        "has_secret": directory.secret is not None,
        "enabled": directory.enabled,
        "sync_interval_hours": directory.sync_interval_hours,
        "auto_update": directory.auto_update,
        "auto_preserve": directory.auto_preserve,
        "hold_above_count": directory.hold_above_count,
        "hold_above_percent": directory.hold_above_percent,
    }


def _checked_settings(kind: DirectoryKind, settings: dict[str, Any]) -> dict[str, Any]:
    if kind in LDAP_KINDS:
        return ldap_source.normalize_settings(kind.value, settings)
    return settings


def _verify(
    kind: DirectoryKind, settings: dict[str, Any], password: str, given: dict[str, Any]
) -> None:
    """Nothing is saved that the directory itself refuses (see ``ldap.verify``)."""
    config = ldap_source.config_from_settings(kind.value, settings)
    ldap_source.verify(config, password, ldap_source.explicit_attributes(given))


def _check_numbers(fields: dict[str, Any]) -> None:
    interval = fields.get("sync_interval_hours")
    if interval is not None and not 0 < interval <= 24 * 365:
        raise InvalidInput("sync_interval_hours must be more than 0", field="sync_interval_hours")
    count = fields.get("hold_above_count")
    if count is not None and count < 0:
        raise InvalidInput("hold_above_count must not be negative", field="hold_above_count")
    percent = fields.get("hold_above_percent")
    if percent is not None and not 0 <= percent <= 100:
        raise InvalidInput(
            "hold_above_percent must be between 0 and 100", field="hold_above_percent"
        )


def _unique_name(session: Session, name: str) -> None:
    if not name or not name.strip():
        raise InvalidInput("name must not be empty", field="name")
    if session.scalar(select(Directory.id).where(Directory.name == name)) is not None:
        raise Conflict(f"directory {name!r} already exists", code="name_taken", field="name")


def _only(fields: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(fields) - allowed
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")


# Mappings -----------------------------------------------------------------------------------


def create_mapping(
    session: Session,
    actor: Actor,
    directory_id: int,
    *,
    data_dir: Path | None = None,
    **fields: Any,
) -> Mapping:
    """Add a mapping; without an explicit priority it comes after the existing ones.

    With ``data_dir`` (the API and CLI pass it) the attributes an AD/LDAP rule names are
    checked against the directory's schema when the directory answers.
    """
    _only(fields, _MAPPING_FIELDS)
    directory = get_directory(session, directory_id)
    _check_mapping(session, fields)
    if data_dir is not None:
        _check_rule_attributes(directory, data_dir, fields)
    if fields.get("priority") is None:
        last = session.scalar(
            select(func.max(Mapping.priority)).where(Mapping.directory_id == directory_id)
        )
        fields["priority"] = 1 if last is None else last + 1
    mapping = Mapping(directory_id=directory_id, **fields)
    session.add(mapping)
    session.flush()
    record(
        session,
        actor,
        "mapping.create",
        "directory_mapping",
        mapping.id,
        after=mapping_view(mapping),
    )
    return mapping


def update_mapping(
    session: Session,
    actor: Actor,
    directory_id: int,
    mapping_id: int,
    *,
    data_dir: Path | None = None,
    **fields: Any,
) -> Mapping:
    _only(fields, _MAPPING_FIELDS)
    mapping = get_mapping(session, directory_id, mapping_id)
    before = mapping_view(mapping)
    _check_mapping(session, fields)
    if fields.get("priority", 0) is None:
        del fields["priority"]
    if data_dir is not None:
        _check_rule_attributes(get_directory(session, directory_id), data_dir, fields)
    for key, value in fields.items():
        setattr(mapping, key, value)
    session.flush()
    record(
        session,
        actor,
        "mapping.update",
        "directory_mapping",
        mapping.id,
        before=before,
        after=mapping_view(mapping),
    )
    return mapping


def reorder_mappings(
    session: Session, actor: Actor, directory_id: int, mapping_ids: list[int]
) -> list[Mapping]:
    """Give the directory's mappings priorities 1, 2, … in the order of ``mapping_ids``,
    which must list each of its mappings exactly once."""
    current = {m.id: m for m in list_mappings(session, directory_id)}
    if sorted(mapping_ids) != sorted(current):
        raise InvalidInput(
            f"list each of the directory's mappings exactly once: {sorted(current)}",
            field="mapping_ids",
        )
    before = {m.id: m.priority for m in current.values()}
    for priority, mapping_id in enumerate(mapping_ids, start=1):
        current[mapping_id].priority = priority
    session.flush()
    record(
        session,
        actor,
        "mapping.reorder",
        "directory",
        directory_id,
        before={"priorities": before},
        after={"priorities": {m: p for p, m in enumerate(mapping_ids, start=1)}},
    )
    return [current[m] for m in mapping_ids]


def delete_mapping(session: Session, actor: Actor, directory_id: int, mapping_id: int) -> None:
    mapping = get_mapping(session, directory_id, mapping_id)
    record(
        session,
        actor,
        "mapping.delete",
        "directory_mapping",
        mapping.id,
        before=mapping_view(mapping),
    )
    session.delete(mapping)


def get_mapping(session: Session, directory_id: int, mapping_id: int) -> Mapping:
    mapping = session.get(Mapping, mapping_id)
    if mapping is None or mapping.directory_id != directory_id:
        raise NotFound(f"mapping {mapping_id} of directory {directory_id} does not exist")
    return mapping


def list_mappings(session: Session, directory_id: int) -> list[Mapping]:
    get_directory(session, directory_id)
    return list(
        session.scalars(
            select(Mapping)
            .where(Mapping.directory_id == directory_id)
            .order_by(Mapping.purpose, Mapping.priority, Mapping.id)
        )
    )


def mapping_view(mapping: Mapping) -> dict[str, Any]:
    return {
        "id": mapping.id,
        "directory_id": mapping.directory_id,
        "name": mapping.name,
        "purpose": str(mapping.purpose),
        "rule": mapping.rule,
        "profile_id": mapping.profile_id,
        "storage_region_id": mapping.storage_region_id,
        "quota_value": mapping.quota_value,
        "quota_unit": None if mapping.quota_unit is None else str(mapping.quota_unit),
        "auto_import": mapping.auto_import,
        "priority": mapping.priority,
    }


def _check_mapping(session: Session, fields: dict[str, Any]) -> None:
    if "rule" in fields:
        parse_rule(fields["rule"])
    if "purpose" in fields:
        fields["purpose"] = MappingPurpose(fields["purpose"])
    if fields.get("profile_id") is not None:
        get_profile(session, fields["profile_id"])
    if fields.get("storage_region_id") is not None:
        get_region(session, fields["storage_region_id"])
    if fields.get("quota_value") is not None:
        fields["quota_unit"] = QuotaUnit(fields.get("quota_unit") or QuotaUnit.GB)


def _check_rule_attributes(directory: Directory, data_dir: Path, fields: dict[str, Any]) -> None:
    if directory.kind not in LDAP_KINDS or "rule" not in fields:
        return
    named = parse_rule(fields["rule"]).named_attributes()
    if not named:
        return
    try:
        ldap_source.verify(ldap_config(directory), _password(data_dir, directory), named)
    except InvalidInput as exc:
        # A directory that refuses the connection itself is the directory's problem (its
        # test says so), not the mapping's: the rule is saved unchecked.
        if exc.code != "directory_refused":
            raise


# Testing and syncing ------------------------------------------------------------------------


def ldap_config(directory: Directory) -> ldap_source.LdapConfig:
    if directory.kind not in LDAP_KINDS:
        raise InvalidInput(
            f"directory {directory.name!r} is a {directory.kind} source, not AD/LDAP",
            code="wrong_kind",
        )
    return ldap_source.config_from_settings(directory.kind.value, directory.settings)


def diagnose_directory(
    session: Session, data_dir: Path, directory_id: int
) -> ldap_source.ConnectionReport:
    """DNS, TCP, TLS, bind and base DN, each reported; the first failure says what to fix."""
    directory = get_directory(session, directory_id)
    return ldap_source.diagnose(ldap_config(directory), _password(data_dir, directory))


def _password(data_dir: Path, directory: Directory) -> str:
    return unseal(data_dir, directory.secret) if directory.secret else ""


def sync_directory(
    factory: sessionmaker[Session],
    actor: Actor,
    data_dir: Path,
    directory_id: int,
    *,
    dry_run: bool = False,
    trigger: str = "manual",
    progress: ldap_source.Progress | None = None,
) -> SyncRun:
    """Sync an AD/LDAP directory now; returns the finished (or held, or failed) run."""
    with factory() as session:
        directory = get_directory(session, directory_id)
        config = ldap_config(directory)
        password = _password(data_dir, directory)
        extra: set[str] = set()
        for mapping in compiled_mappings(session, directory_id):
            extra |= mapping.rule.attributes

    def fetch() -> FetchResult:
        return ldap_source.fetch(config, password, extra, progress)

    return run_sync(factory, actor, directory_id, fetch, dry_run=dry_run, trigger=trigger)


def sync_due_directories(
    factory: sessionmaker[Session], actor: Actor, data_dir: Path
) -> list[SyncRun]:
    """The scheduled job: every enabled AD/LDAP directory whose interval has elapsed."""
    with factory() as session:
        due = due_directories(session, [k.value for k in LDAP_KINDS])
    return [
        sync_directory(factory, actor, data_dir, directory_id, trigger="schedule")
        for directory_id in due
    ]


def list_sync_runs(
    session: Session, directory_id: int, *, after_id: int | None = None, limit: int = 50
) -> list[SyncRun]:
    """Newest first."""
    get_directory(session, directory_id)
    query = (
        select(SyncRun)
        .where(SyncRun.directory_id == directory_id)
        .order_by(SyncRun.id.desc())
        .limit(limit)
    )
    if after_id is not None:
        query = query.where(SyncRun.id < after_id)
    return list(session.scalars(query))


def get_sync_run(session: Session, directory_id: int, run_id: int) -> SyncRun:
    run = session.get(SyncRun, run_id)
    if run is None or run.directory_id != directory_id:
        raise NotFound(f"sync run {run_id} of directory {directory_id} does not exist")
    return run


def confirm_held_sync(session: Session, actor: Actor, directory_id: int, run_id: int) -> SyncRun:
    get_sync_run(session, directory_id, run_id)
    run = confirm_sync(session, actor, run_id)
    record(
        session,
        actor,
        "directory.sync_confirm",
        "directory",
        directory_id,
        after={"sync_run_id": run_id},
    )
    return run
