from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from fleetkeep.alerts.models import AlertStatus, Severity
from fleetkeep.alerts.service import list_alerts, resolve_alert_by_id
from fleetkeep.audit.service import record
from fleetkeep.web.deps import CurrentActor, DbSession
from fleetkeep.web.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, next_cursor
from fleetkeep.web.schemas import Output

router = APIRouter(tags=["alerts"])


class AlertOut(Output):
    id: int
    type: str
    subject: str
    severity: Severity
    status: AlertStatus
    message: str
    details: dict[str, Any]
    occurrences: int
    first_seen_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None


@router.get("/alerts")
def alerts(
    session: DbSession,
    status: Literal["open", "resolved", "all"] = "open",
    type: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[AlertOut]:
    found = list_alerts(
        session,
        status=None if status == "all" else AlertStatus(status),
        type=type,
        after_id=decode_cursor(cursor),
        limit=limit,
    )
    return Page(
        items=[AlertOut.model_validate(a) for a in found],
        next_cursor=next_cursor([a.id for a in found], limit),
    )


@router.post("/alerts/{alert_id}/resolve")
def resolve(alert_id: int, session: DbSession, actor: CurrentActor) -> AlertOut:
    alert = resolve_alert_by_id(session, alert_id)
    record(session, actor, "alert.resolve", "alert", alert.id)
    return AlertOut.model_validate(alert)
