"""IMD v4 device mappings: a CSV saying which user each device (by serial, UUID or hostname) is for.

The file is validated as a whole: if any row fails, nothing is stored and every failed row is
reported with its line number and reason. A stored row is consumed by the activation it serves.
"""

from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from fleetkeep.audit.service import Actor, record
from fleetkeep.db import utcnow
from fleetkeep.deployment.models import DeviceMapping, IdentifierType, RestoreScope
from fleetkeep.errors import InvalidInput, NotFound
from fleetkeep.identity.models import User, UserState
from fleetkeep.identity.service import normalize_email, validate_email

REQUIRED = ("emailID", "userName", "deviceName", "deviceIdentifierType", "deviceIdentifier")
OPTIONAL = ("oldDeviceName", "restoreData")
MAX_ROWS = 100_000
MAX_FIELD = 255


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str


def normalize_identifier(kind: IdentifierType, raw: str) -> str:
    """Serials compare upper-case, UUIDs and hostnames lower-case, all without spaces around."""
    value = raw.strip()
    return value.upper() if kind is IdentifierType.SERIAL_NUMBER else value.lower()


def decode(data: bytes) -> str:
    """UTF-8 (with or without BOM) or UTF-16 with a BOM, as spreadsheets save CSV."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"the file is not valid UTF-16: {exc.reason}", code="bad_encoding"
            ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"the file is not UTF-8 (invalid byte at offset {exc.start}); save it as CSV UTF-8",
            code="bad_encoding",
        ) from None


def parse_rows(session: Session, data: bytes) -> tuple[list[dict[str, Any]], list[RowError]]:
    """Rows ready to insert and the errors found; the caller stores rows only when no errors."""
    reader = csv.reader(io.StringIO(decode(data), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidInput("the file is empty", code="empty_file") from None
    columns = _columns(header)
    rows: list[dict[str, Any]] = []
    errors: list[RowError] = []
    seen: dict[tuple[IdentifierType, str], int] = {}
    emails: dict[str, User | None] = {}
    for values in reader:
        line = reader.line_num
        if not any(v.strip() for v in values):
            continue
        if len(rows) + len(errors) >= MAX_ROWS:
            raise InvalidInput(f"the file has more than {MAX_ROWS} rows", code="too_many_rows")
        if len(values) > len(header):
            errors.append(RowError(line, f"{len(values)} fields but the header has {len(header)}"))
            continue
        fields = {name: values[i].strip() if i < len(values) else "" for name, i in columns.items()}
        try:
            row = _row(fields, emails, session)
        except InvalidInput as exc:
            errors.append(RowError(line, exc.detail))
            continue
        key = (row["identifier_type"], row["identifier"])
        if key in seen:
            errors.append(RowError(line, f"{key[0]} {key[1]} is also on line {seen[key]}"))
            continue
        seen[key] = line
        rows.append({**row, "line": line})
    if not rows and not errors:
        raise InvalidInput("the file has a header but no rows", code="empty_file")
    errors.extend(_already_mapped(session, rows))
    return rows, sorted(errors, key=lambda e: e.line)


def import_mappings(session: Session, actor: Actor, data: bytes, filename: str = "") -> int:
    """Store every row, or none: raises ``InvalidInput`` (code ``mapping_rows_invalid``) with
    ``failed_rows`` when any row fails. The rejection itself is audited."""
    try:
        rows, errors = parse_rows(session, data)
        if errors:
            raise InvalidInput(
                f"{len(errors)} row(s) failed; nothing was imported",
                code="mapping_rows_invalid",
                failed_rows=[{"line": e.line, "reason": e.reason} for e in errors],
            )
    except InvalidInput as exc:
        record(
            session,
            actor,
            "device_mapping.reject",
            "device_mapping",
            filename,
            after={"code": exc.code, "detail": exc.detail, **exc.extra},
        )
        raise
    now = utcnow()
    session.execute(
        insert(DeviceMapping),
        [
            {
                **{k: v for k, v in row.items() if k != "line"},
                "uploaded_by": actor.name,
                "uploaded_at": now,
            }
            for row in rows
        ],
    )
    record(
        session,
        actor,
        "device_mapping.import",
        "device_mapping",
        filename,
        after={"rows": len(rows)},
    )
    return len(rows)


def list_mappings(
    session: Session, *, pending_only: bool = False, after_id: int | None = None, limit: int = 100
) -> list[DeviceMapping]:
    query = select(DeviceMapping).order_by(DeviceMapping.id).limit(limit)
    if pending_only:
        query = query.where(DeviceMapping.consumed_at.is_(None))
    if after_id is not None:
        query = query.where(DeviceMapping.id > after_id)
    return list(session.scalars(query))


def delete_mapping(session: Session, actor: Actor, mapping_id: int) -> None:
    row = session.get(DeviceMapping, mapping_id)
    if row is None:
        raise NotFound(f"device mapping {mapping_id} does not exist")
    record(
        session,
        actor,
        "device_mapping.delete",
        "device_mapping",
        row.id,
        before={"email": row.email, "identifier": row.identifier},
    )
    session.delete(row)


def _columns(header: list[str]) -> dict[str, int]:
    names = [h.strip().rstrip("*").strip() for h in header]
    known = {n.lower(): n for n in (*REQUIRED, *OPTIONAL)}
    unknown = [h for h in names if h.lower() not in known]
    if unknown:
        raise InvalidInput(
            f"unknown column(s): {', '.join(unknown)}; expected {', '.join(REQUIRED + OPTIONAL)}",
            code="bad_columns",
        )
    columns: dict[str, int] = {}
    for index, name in enumerate(names):
        canonical = known[name.lower()]
        if canonical in columns:
            raise InvalidInput(f"column {canonical} appears twice", code="bad_columns")
        columns[canonical] = index
    missing = [name for name in REQUIRED if name not in columns]
    if missing:
        raise InvalidInput(f"missing column(s): {', '.join(missing)}", code="bad_columns")
    return columns


def _row(
    fields: dict[str, str], emails: dict[str, User | None], session: Session
) -> dict[str, Any]:
    for name in REQUIRED:
        if not fields.get(name):
            raise InvalidInput(f"{name} is empty")
    for name, value in fields.items():
        if len(value) > (320 if name == "emailID" else MAX_FIELD):
            raise InvalidInput(f"{name} is longer than {MAX_FIELD} characters")
    email = validate_email(fields["emailID"])
    normalized = normalize_email(email)
    if normalized not in emails:
        emails[normalized] = session.scalar(select(User).where(User.email_normalized == normalized))
    user = emails[normalized]
    if user is None:
        raise InvalidInput(f"no user with email {email}")
    if user.state is not UserState.ACTIVE:
        raise InvalidInput(f"user {email} is {user.state}")
    try:
        kind = IdentifierType(fields["deviceIdentifierType"].lower())
    except ValueError:
        raise InvalidInput(
            f"deviceIdentifierType {fields['deviceIdentifierType']!r} is not one of "
            "serial-number, uuid, hostname"
        ) from None
    scope: RestoreScope | None = None
    if fields.get("restoreData"):
        try:
            scope = RestoreScope(fields["restoreData"].upper())
        except ValueError:
            raise InvalidInput(
                f"restoreData {fields['restoreData']!r} is not one of ALL, SYSTEM, DATA"
            ) from None
        if not fields.get("oldDeviceName"):
            raise InvalidInput("restoreData needs oldDeviceName (the device to restore from)")
    return {
        "email": email,
        "user_id": user.id,
        "username": fields["userName"],
        "device_name": fields["deviceName"],
        "identifier_type": kind,
        "identifier": normalize_identifier(kind, fields["deviceIdentifier"]),
        "old_device_name": fields.get("oldDeviceName", ""),
        "restore_scope": scope,
    }


def _already_mapped(session: Session, rows: list[dict[str, Any]]) -> list[RowError]:
    errors = []
    for row in rows:
        clash = session.scalar(
            select(DeviceMapping.id).where(
                DeviceMapping.identifier_type == row["identifier_type"],
                DeviceMapping.identifier == row["identifier"],
                DeviceMapping.consumed_at.is_(None),
            )
        )
        if clash is not None:
            errors.append(
                RowError(
                    row["line"],
                    f"{row['identifier_type']} {row['identifier']} is already mapped "
                    f"(unused row {clash})",
                )
            )
    return errors
