"""Raising and resolving alerts. One open alert per (type, subject), updated in place."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fleetkeep.alerts.models import Alert, AlertStatus, Severity
from fleetkeep.db import utcnow
from fleetkeep.errors import NotFound


def raise_alert(
    session: Session,
    type: str,
    subject: str,
    severity: Severity | str,
    message: str,
    details: dict[str, Any] | None = None,
) -> Alert:
    """Open the alert, or refresh the open one for the same type and subject."""
    severity = Severity(severity)
    now = utcnow()
    existing = _open(session, type, subject)
    if existing is not None:
        existing.severity = severity
        existing.message = message
        existing.details = details or {}
        existing.occurrences += 1
        existing.last_seen_at = now
        return existing
    alert = Alert(
        type=type,
        subject=subject,
        severity=severity,
        message=message,
        details=details or {},
        first_seen_at=now,
        last_seen_at=now,
    )
    # Two processes may raise the same alert at once; the partial unique index keeps one.
    try:
        with session.begin_nested():
            session.add(alert)
    except IntegrityError:
        return raise_alert(session, type, subject, severity, message, details)
    return alert


def resolve_alert(session: Session, type: str, subject: str) -> Alert | None:
    """Close the open alert for (type, subject), if any; returns it."""
    alert = _open(session, type, subject)
    if alert is not None:
        alert.status = AlertStatus.RESOLVED
        alert.resolved_at = utcnow()
    return alert


def resolve_alert_by_id(session: Session, alert_id: int) -> Alert:
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise NotFound(f"alert {alert_id} does not exist")
    if alert.status is AlertStatus.OPEN:
        alert.status = AlertStatus.RESOLVED
        alert.resolved_at = utcnow()
    return alert


def list_alerts(
    session: Session,
    *,
    status: AlertStatus | None = AlertStatus.OPEN,
    type: str | None = None,
    after_id: int | None = None,
    limit: int = 100,
) -> list[Alert]:
    query = select(Alert).order_by(Alert.id.desc()).limit(limit)
    if status is not None:
        query = query.where(Alert.status == status)
    if type:
        query = query.where(Alert.type == type)
    if after_id is not None:
        query = query.where(Alert.id < after_id)
    return list(session.scalars(query))


def _open(session: Session, type: str, subject: str) -> Alert | None:
    return session.scalar(
        select(Alert).where(
            Alert.type == type, Alert.subject == subject, Alert.status == AlertStatus.OPEN
        )
    )
