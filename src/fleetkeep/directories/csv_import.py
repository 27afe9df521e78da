"""CSV import of users, fed through the same plan/apply core as every directory.

Columns: ``email`` (required), ``username``, ``name``, ``profile``, ``region``, ``quota``.
The whole file is validated first: a file-level problem (not UTF-8, no ``email`` column,
unknown columns, nothing but a header) refuses the import and changes nothing; row problems
(invalid email, unknown profile, bad quota, the same email twice) are reported with their
line number, and the valid rows are applied. Re-importing the same file changes nothing.

Each import is a ``SyncRun`` of the one directory of kind ``csv`` (created on first use), so
imports share the sync history, dry runs and audit of every other source. Rows get their
profile, region and quota through ordinary mappings of that directory: one attribute mapping
per distinct (profile, region, quota) in the file, e.g. ``profile equals "Staff" and region
equals "eu" and quota equals "50GB"``. An import adds users and updates them; it never
preserves users that are missing from the file (it is not the full list).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.audit.service import Actor
from fleetkeep.db import transaction
from fleetkeep.directories import service as directories
from fleetkeep.directories.models import Directory, DirectoryKind, MappingPurpose, SyncRun
from fleetkeep.directories.sync import FetchResult, SourceUser, run_sync
from fleetkeep.errors import InvalidInput, NotFound
from fleetkeep.identity import service as identity
from fleetkeep.identity.service import normalize_email

COLUMNS = ("email", "username", "name", "profile", "region", "quota")
MAX_ROWS = 200_000
DIRECTORY_NAME = "CSV import"


class ImportRefused(InvalidInput):
    """The file as a whole cannot be imported; nothing was changed."""

    code = "import_refused"


@dataclass(frozen=True)
class Row:
    line: int
    email: str
    username: str
    name: str
    profile: str
    region: str
    quota: str


@dataclass
class Parsed:
    rows: list[Row] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


def parse(data: bytes, *, default_profile: str = "", default_region: str = "") -> Parsed:
    """Decode and check the file; the rows that pass and, per line, why the others fail."""
    text = _decode(data)
    sample = text[:4096]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t") if sample else csv.excel
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    try:
        header = next(reader)
    except StopIteration:
        raise ImportRefused("the file is empty; the first line must name the columns") from None
    except csv.Error as exc:
        raise ImportRefused(f"line 1 is not valid CSV: {exc}") from None
    columns = [c.strip().lower() for c in header]
    _check_header(columns)
    parsed = Parsed()
    seen: dict[str, int] = {}
    try:
        for record in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if len(parsed.rows) + len(parsed.errors) >= MAX_ROWS:
                raise ImportRefused(f"the file has more than {MAX_ROWS} rows; split it")
            row, problem = _row(line, columns, record, default_profile, default_region)
            if row is not None and not problem:
                key = normalize_email(row.email)
                if key in seen:
                    problem = f"duplicate: {row.email} is already on line {seen[key]}"
                else:
                    seen[key] = line
            if problem:
                parsed.errors.append(
                    {"line": line, "email": record_email(columns, record), "reason": problem}
                )
            elif row is not None:
                parsed.rows.append(row)
    except csv.Error as exc:
        raise ImportRefused(f"line {reader.line_num} is not valid CSV: {exc}") from None
    if not parsed.rows and not parsed.errors:
        raise ImportRefused("the file has a header but no rows")
    return parsed


def record_email(columns: list[str], record: list[str]) -> str:
    index = columns.index("email")
    return record[index].strip() if index < len(record) else ""


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ImportRefused(
            f"the file is not UTF-8: line {line}, column {column} has byte "
            f"0x{data[exc.start]:02X}; save it as 'CSV UTF-8'",
            line=line,
        ) from None


def _check_header(columns: list[str]) -> None:
    if "email" not in columns:
        raise ImportRefused(
            f"the header has no 'email' column (found: {', '.join(columns) or 'nothing'}); "
            f"columns are {', '.join(COLUMNS)}"
        )
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise ImportRefused(
            f"unknown column(s) {', '.join(map(repr, unknown))}; columns are {', '.join(COLUMNS)}"
        )
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise ImportRefused(f"column(s) {', '.join(twice)} appear more than once")


def _row(
    line: int, columns: list[str], record: list[str], default_profile: str, default_region: str
) -> tuple[Row | None, str]:
    if len(record) > len(columns):
        return None, f"{len(record)} fields but the header has {len(columns)}"
    values = {c: (record[i].strip() if i < len(record) else "") for i, c in enumerate(columns)}
    email = values.get("email", "")
    if not email:
        return None, "email is empty"
    try:
        identity.validate_email(email)
    except InvalidInput as exc:
        return None, exc.detail
    quota = values.get("quota", "")
    if quota:
        try:
            identity.parse_quota(quota)
        except InvalidInput as exc:
            return None, exc.detail
    profile = values.get("profile") or default_profile
    region = values.get("region") or default_region
    if not profile:
        return None, "no profile: fill the profile column or give a default profile"
    if not region:
        return None, "no region: fill the region column or give a default region"
    return (
        Row(
            line,
            email,
            values.get("username", ""),
            values.get("name", ""),
            profile,
            region,
            quota,
        ),
        "",
    )


# Importing --------------------------------------------------------------------------------------


@dataclass
class ImportResult:
    run: SyncRun
    errors: list[dict[str, Any]]


def import_users(
    factory: sessionmaker[Session],
    actor: Actor,
    data_dir: Path,
    data: bytes,
    *,
    filename: str = "",
    dry_run: bool = False,
    default_profile: str = "",
    default_region: str = "",
) -> ImportResult:
    """Validate the file, then plan and apply (or only plan) its valid rows."""
    parsed = parse(data, default_profile=default_profile, default_region=default_region)
    with transaction(factory) as session:
        directory = csv_directory(session, actor, data_dir)
        rows = _resolve(session, parsed)
        _assignment_mappings(session, actor, directory, rows)
        directory_id = directory.id
    users = [_source_user(row) for row in rows]
    run = run_sync(
        factory,
        actor,
        directory_id,
        lambda: FetchResult(users),
        dry_run=dry_run,
        trigger="csv",
        complete=False,
    )
    lines = {normalize_email(row.email): row.line for row in rows}
    errors = sorted(parsed.errors + _plan_refusals(run, lines), key=lambda e: e["line"])
    with transaction(factory) as session:
        stored = session.get(SyncRun, run.id)
        assert stored is not None
        stored.report = {
            **stored.report,
            "file": filename,
            "rows": len(parsed.rows) + len(parsed.errors),
            "rejected_rows": errors,
        }
        stored.errors = len(errors)
        run = stored
    return ImportResult(run, errors)


def csv_directory(session: Session, actor: Actor, data_dir: Path) -> Directory:
    directory = session.scalar(select(Directory).where(Directory.kind == DirectoryKind.CSV))
    if directory is None:
        directory = directories.create_directory(
            session,
            actor,
            data_dir,
            name=DIRECTORY_NAME,
            kind=DirectoryKind.CSV,
            auto_preserve=False,
        )
    return directory


def _resolve(session: Session, parsed: Parsed) -> list[Row]:
    """Rows whose profile and region exist; the others join the errors."""
    profiles: dict[str, str | None] = {}
    regions: dict[str, str | None] = {}
    kept = []
    for row in parsed.rows:
        profile = _lookup(
            profiles, row.profile, lambda ref: identity.find_profile(session, ref).name
        )
        region = _lookup(regions, row.region, lambda ref: identity.find_region(session, ref).name)
        if profile is None:
            parsed.errors.append(_error(row, f"no profile named {row.profile!r}"))
        elif region is None:
            parsed.errors.append(_error(row, f"no storage region named {row.region!r}"))
        else:
            kept.append(
                Row(row.line, row.email, row.username, row.name, profile, region, row.quota)
            )
    return kept


def _lookup(cache: dict[str, str | None], ref: str, find: Any) -> str | None:
    if ref not in cache:
        try:
            cache[ref] = find(ref)
        except NotFound:
            cache[ref] = None
    return cache[ref]


def _error(row: Row, reason: str) -> dict[str, Any]:
    return {"line": row.line, "email": row.email, "reason": reason}


def _assignment_key(row: Row) -> tuple[str, str, str]:
    quota = ""
    if row.quota:
        value, unit = identity.parse_quota(row.quota)
        quota = f"{value}{unit}"
    return row.profile, row.region, quota


def _assignment_mappings(
    session: Session, actor: Actor, directory: Directory, rows: Sequence[Row]
) -> None:
    """One mapping per (profile, region, quota) in the file, reused by later imports."""
    existing = {
        _rule_key(m.rule): m
        for m in directories.list_mappings(session, directory.id)
        if m.purpose is MappingPurpose.IMPORT
    }
    for key in {_assignment_key(row) for row in rows}:
        if key not in existing:
            profile, region, quota = key
            value, unit = identity.parse_quota(quota) if quota else (None, None)
            existing[key] = directories.create_mapping(
                session,
                actor,
                directory.id,
                name=f"csv: {profile} / {region} / {quota or 'profile quota'}",
                rule=_rule(key),
                profile_id=identity.find_profile(session, profile).id,
                storage_region_id=identity.find_region(session, region).id,
                quota_value=value,
                quota_unit=unit,
            )


def _rule(key: tuple[str, str, str]) -> dict[str, Any]:
    profile, region, quota = key
    conditions = [
        {"attribute": "profile", "op": "equals", "value": profile},
        {"attribute": "region", "op": "equals", "value": region},
        {"attribute": "quota", "op": "equals", "value": quota}
        if quota
        else {"attribute": "quota", "op": "absent"},
    ]
    return {"type": "attribute", "match": "all", "conditions": conditions}


def _rule_key(rule: dict[str, Any]) -> tuple[str, str, str] | None:
    try:
        values = {c["attribute"]: c.get("value", "") for c in rule["conditions"]}
        return values["profile"], values["region"], values.get("quota", "")
    except (KeyError, TypeError):
        return None


def _source_user(row: Row) -> SourceUser:
    profile, region, quota = _assignment_key(row)
    attributes = {"profile": [profile], "region": [region], "email": [row.email]}
    if quota:
        attributes["quota"] = [quota]
    return SourceUser(
        external_id=normalize_email(row.email),
        email=row.email,
        username=row.username or row.email.split("@", 1)[0],
        display_name=row.name,
        attributes=attributes,
    )


def _plan_refusals(run: SyncRun, lines: dict[str, int]) -> list[dict[str, Any]]:
    """Rows the plan skipped (email used by another source, preserved by an admin …)."""
    refused = []
    for change in run.report.get("changes", []):
        if change["action"] == "skip":
            line = lines.get(change["external_id"], 0)
            refused.append(
                {"line": line, "email": change.get("email") or "", "reason": _reason(change)}
            )
    if run.error:
        refused.append({"line": 0, "email": "", "reason": f"import failed: {run.error}"})
    return refused


def _reason(change: dict[str, Any]) -> str:
    reason = str(change.get("reason", ""))
    if reason == "email_in_use":
        return "a user with this email already exists and belongs to another source"
    if reason.startswith("preserved_by:"):
        return f"the user was preserved by {reason.split(':', 1)[1]}; restore it first"
    if reason == "deleted":
        return "the user is deleted; restore it first"
    return reason


def get_import(session: Session, run_id: int) -> SyncRun:
    run = session.get(SyncRun, run_id)
    directory = session.get(Directory, run.directory_id) if run is not None else None
    if run is None or directory is None or directory.kind is not DirectoryKind.CSV:
        raise NotFound(f"import {run_id} does not exist")
    return run


def errors_csv(run: SyncRun) -> str:
    """The rejected rows as CSV (line, email, reason), for the admin to fix and re-import."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["line", "email", "reason"])
    for error in run.report.get("rejected_rows", []):
        writer.writerow([error["line"], error["email"], error["reason"]])
    return out.getvalue()
