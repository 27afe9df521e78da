"""Recording and reading audit events. Every service that changes state calls ``record``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, String, Table, insert, literal, select
from sqlalchemy.orm import Session

from fleetkeep.audit.models import AuditEvent
from fleetkeep.db import insert_rows, utcnow


@dataclass(frozen=True)
class Actor:
    """Who is acting: ``admin:alice@example.com``, ``sync:directory:3``, ``system`` …"""

    name: str
    request_id: str | None = None
    source_ip: str | None = None


SYSTEM = Actor("system")


def record(
    session: Session,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: object = "",
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    at_once: bool = False,
) -> None:
    """Add the event to the session; ``at_once`` sends it as one Core INSERT instead, for a
    path that records one event per request and wants no unit-of-work flush (activation)."""
    event = _event(actor, action, target_type, target_id, before, after)
    if at_once:
        session.execute(_INSERT, event)
    else:
        session.add(AuditEvent(**event))


def _event(
    actor: Actor,
    action: str,
    target_type: str,
    target_id: object,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "at": utcnow(),
        "actor": actor.name,
        "action": action,
        "target_type": target_type,
        "target_id": str(target_id),
        "before": before,
        "after": after,
        "request_id": actor.request_id,
        "source_ip": actor.source_ip,
    }


_INSERT = insert(cast(Table, AuditEvent.__table__))


def record_many(session: Session, actor: Actor, rows: Sequence[dict[str, Any]]) -> None:
    """Bulk form for syncs: each row has action, target_type, target_id, before, after."""
    if not rows:
        return
    now = utcnow()
    insert_rows(
        session,
        AuditEvent,
        [
            {
                "at": now,
                "actor": actor.name,
                "request_id": actor.request_id,
                "source_ip": actor.source_ip,
                "target_id": str(row.get("target_id", "")),
                "before": row.get("before"),
                "after": row.get("after"),
                "action": row["action"],
                "target_type": row["target_type"],
            }
            for row in rows
        ],
    )


def record_from_select(
    session: Session, actor: Actor, action: str, target_type: str, query: Select[Any]
) -> None:
    """Bulk form built by the database: one event per row of ``query``, whose two columns
    are the target id (text) and the ``after`` JSON (e.g. from ``json_build_object``).

    Why: a first sync creating 100,000 users would otherwise read their ids back and send
    100,000 JSON documents that the database already holds as columns.
    """
    rows = query.subquery()
    names = ["target_id", "after", "at", "actor", "request_id", "source_ip", "action"]
    source = select(
        rows.c[0],
        rows.c[1],
        literal(utcnow(), AuditEvent.at.type),
        literal(actor.name, String()),
        literal(actor.request_id, String()),
        literal(actor.source_ip, String()),
        literal(action, String()),
        literal(target_type, String()),
    )
    session.execute(insert(AuditEvent).from_select([*names, "target_type"], source))


def list_events(
    session: Session,
    *,
    after_id: int | None = None,
    limit: int = 100,
    action: str | None = None,
    actor: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    since: datetime | None = None,
) -> list[AuditEvent]:
    """Newest first; ``after_id`` continues below that id (cursor)."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if after_id is not None:
        query = query.where(AuditEvent.id < after_id)
    if action:
        query = query.where(AuditEvent.action == action)
    if actor:
        query = query.where(AuditEvent.actor == actor)
    if target_type:
        query = query.where(AuditEvent.target_type == target_type)
    if target_id:
        query = query.where(AuditEvent.target_id == target_id)
    if since:
        query = query.where(AuditEvent.at >= since)
    return list(session.scalars(query))
