from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from fleetkeep.audit.service import list_events
from fleetkeep.web.deps import DbSession
from fleetkeep.web.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, next_cursor
from fleetkeep.web.schemas import Output

router = APIRouter(tags=["audit"])


class AuditEventOut(Output):
    id: int
    at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None
    source_ip: str | None


@router.get("/audit")
def audit(
    session: DbSession,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    action: str | None = None,
    actor: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    since: datetime | None = None,
) -> Page[AuditEventOut]:
    """Newest first."""
    events = list_events(
        session,
        after_id=decode_cursor(cursor),
        limit=limit,
        action=action,
        actor=actor,
        target_type=target_type,
        target_id=target_id,
        since=since,
    )
    return Page(
        items=[AuditEventOut.model_validate(e) for e in events],
        next_cursor=next_cursor([e.id for e in events], limit),
    )
