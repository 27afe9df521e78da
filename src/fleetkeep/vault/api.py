"""``/api/v1`` snapshot catalogue and backup sessions, for admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fleetkeep.vault import catalogue
from fleetkeep.vault.models import SessionState
from fleetkeep.vault.schemas import SessionOut, SnapshotOut
from fleetkeep.web.deps import DbSession
from fleetkeep.web.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, next_cursor

router = APIRouter(tags=["backups"])


@router.get("/snapshots")
def list_snapshots(
    session: DbSession,
    user_id: int | None = None,
    device_id: int | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[SnapshotOut]:
    """Newest first."""
    rows = catalogue.list_snapshots(
        session, user_id=user_id, device_id=device_id, after_id=decode_cursor(cursor), limit=limit
    )
    return Page(
        items=[SnapshotOut.model_validate(r) for r in rows],
        next_cursor=next_cursor([r.id for r in rows], limit),
    )


@router.get("/backup-sessions")
def list_sessions(
    session: DbSession,
    user_id: int | None = None,
    device_id: int | None = None,
    state: SessionState | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[SessionOut]:
    """Newest first; an open session's ``progress`` is what its agent last reported."""
    rows = catalogue.list_sessions(
        session,
        user_id=user_id,
        device_id=device_id,
        state=state,
        after_id=decode_cursor(cursor),
        limit=limit,
    )
    return Page(
        items=[SessionOut.model_validate(r) for r in rows],
        next_cursor=next_cursor([r.id for r in rows], limit),
    )
