"""``/device/v1`` backup sessions and repository reads: the agent's remote store.

A backup is ``POST /backup-sessions`` (the key, quota state), ``PUT …/objects/{name}`` for each
pack and index file (streamed, capped, checked against the name), ``PUT …/snapshot/{id}``
to commit, or ``POST …/abort``. Reads (``/repository/objects``) serve the agent's index load,
crash recovery and restores. Deduplication uses the repository index, which the agent reads
and caches itself: no per-chunk round trips and no chunk table on the server.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, Response, status
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from fleetkeep.deployment.deps import CurrentDevice
from fleetkeep.deployment.models import Device
from fleetkeep.errors import FleetkeepError, InvalidInput
from fleetkeep.keys.api import AppKeyring
from fleetkeep.vault import catalogue, sessions
from fleetkeep.vault.errors import ObjectTooLarge
from fleetkeep.vault.schemas import (
    AbortIn,
    ConfirmIn,
    DirectUploadIn,
    DirectUploadOut,
    ObjectOut,
    ObjectPage,
    ProgressIn,
    RepositoryKey,
    RestoreOutcomeIn,
    SessionBegun,
    SessionOut,
    SnapshotOut,
    UploadOut,
)
from fleetkeep.web.deps import DbSession

router = APIRouter(prefix="/device/v1", tags=["device-backup"])
UPLOAD_PREFIX = "/device/v1/backup-sessions"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_LIST_LIMIT = 5000
R = TypeVar("R")


@router.post("/backup-sessions", status_code=status.HTTP_201_CREATED)
def begin(device: CurrentDevice, session: DbSession, keyring: AppKeyring) -> SessionBegun:
    try:
        begun = sessions.begin_session(session, keyring, device)
    except FleetkeepError:
        session.commit()  # keep the quota alert
        raise
    return SessionBegun(
        session_id=begun.session.id,
        dek=base64.b64encode(begun.dek).decode(),
        used_bytes=begun.used_bytes,
        quota_bytes=begun.quota_bytes,
        max_object_bytes=sessions.MAX_OBJECT_BYTES,
        direct_upload=begun.direct_upload,
    )


async def _read_capped(request: Request) -> bytes:
    """The body, refused as soon as it passes the cap, joined once at the end (a growing
    bytearray re-copies itself as it grows). Hashing it is left to the worker thread that
    stores it: done here, on the event loop, it stalled every other request (a parallel
    upload's body among them) for the ~10 ms each 16 MiB pack takes."""
    pieces: list[bytes] = []
    size = 0
    async for piece in request.stream():
        size += len(piece)
        if size > sessions.MAX_OBJECT_BYTES:
            raise ObjectTooLarge(f"objects are limited to {sessions.MAX_OBJECT_BYTES} bytes")
        pieces.append(piece)
    return b"".join(pieces)


def _committing(session: Session, call: Callable[..., R], *args: Any) -> R:
    """Run a service call; a refusal still commits what it recorded (failed session, alert)."""
    try:
        return call(session, *args)
    except FleetkeepError:
        session.commit()
        raise


@router.put("/backup-sessions/{session_id}/objects/{name:path}")
async def upload(
    session_id: int, name: str, request: Request, device: CurrentDevice, session: DbSession
) -> UploadOut:
    sessions.check_upload_name(name)
    data = await _read_capped(request)
    stored = await run_in_threadpool(
        _committing, session, sessions.upload_object, device, session_id, name, data
    )
    return UploadOut(name=name, stored=stored)


@router.post("/backup-sessions/{session_id}/direct-uploads")
def direct_upload(
    session_id: int, body: DirectUploadIn, device: CurrentDevice, session: DbSession
) -> DirectUploadOut:
    """With an S3 store: a pre-signed URL to PUT one pack, so its bytes bypass the server."""
    url = _committing(session, sessions.direct_upload_url, device, session_id, body.name, body.size)
    return DirectUploadOut(url=url)


@router.post("/backup-sessions/{session_id}/direct-uploads/confirm")
def confirm_direct_upload(
    session_id: int, body: ConfirmIn, device: CurrentDevice, session: DbSession
) -> UploadOut:
    sessions.confirm_direct_upload(session, device, session_id, body.name)
    return UploadOut(name=body.name, stored=True)


@router.put("/backup-sessions/{session_id}/snapshot/{snapshot_id}")
async def commit(
    session_id: int,
    snapshot_id: str,
    request: Request,
    device: CurrentDevice,
    session: DbSession,
    keyring: AppKeyring,
) -> SnapshotOut:
    data = await _read_capped(request)
    record = await run_in_threadpool(
        _committing,
        session,
        sessions.commit_snapshot,
        keyring,
        device,
        session_id,
        f"snapshots/{snapshot_id}",
        data,
    )
    return SnapshotOut.model_validate(record)


@router.post("/backup-sessions/{session_id}/progress")
def progress(
    session_id: int, body: ProgressIn, device: CurrentDevice, session: DbSession
) -> SessionOut:
    row = sessions.report_progress(session, device, session_id, body.model_dump())
    return SessionOut.model_validate(row)


@router.post("/backup-sessions/{session_id}/abort")
def abort(session_id: int, body: AbortIn, device: CurrentDevice, session: DbSession) -> SessionOut:
    return SessionOut.model_validate(
        sessions.abort_session(session, device, session_id, body.reason)
    )


@router.post("/repository/key")
def repository_key(device: CurrentDevice, session: DbSession, keyring: AppKeyring) -> RepositoryKey:
    dek, exists = sessions.repository_key(session, keyring, device)
    return RepositoryKey(dek=base64.b64encode(dek).decode(), exists=exists)


@router.get("/repository/objects")
def list_objects(
    device: CurrentDevice,
    session: DbSession,
    prefix: str = "",
    after: str = "",
    limit: Annotated[int, Query(ge=1, le=_LIST_LIMIT)] = _LIST_LIMIT,
) -> ObjectPage:
    if prefix.partition("/")[0] not in sessions.READABLE_FOLDERS:
        raise InvalidInput(f"cannot list {prefix!r}", field="prefix")
    store = sessions.user_store(session, device.user)
    items: list[ObjectOut] = []
    for info in store.list(prefix):
        if info.name <= after:
            continue
        if len(items) == limit:
            return ObjectPage(items=items, next_after=items[-1].name)
        items.append(ObjectOut(name=info.name, size=info.size, modified=info.modified))
    return ObjectPage(items=items)


def _object(device: Device, session: Session, name: str, range_header: str | None) -> Response:
    sessions.check_read_name(name)
    store = sessions.user_store(session, device.user)
    if range_header is None:
        return Response(store.get(name), media_type="application/octet-stream")
    match = _RANGE.match(range_header.strip())
    if match is None or match.groups() == ("", ""):
        raise InvalidInput(f"unsupported Range {range_header!r}", field="range")
    start, end = match.groups()
    if start == "":
        data = store.get_range(name, -int(end), int(end))
    else:
        offset = int(start)
        length = int(end) - offset + 1 if end else sessions.MAX_OBJECT_BYTES
        data = store.get_range(name, offset, max(0, length))
    return Response(data, status_code=206, media_type="application/octet-stream")


@router.get("/repository/objects/{name:path}")
def get_object(name: str, request: Request, device: CurrentDevice, session: DbSession) -> Response:
    return _object(device, session, name, request.headers.get("range"))


@router.head("/repository/objects/{name:path}")
def head_object(name: str, device: CurrentDevice, session: DbSession) -> Response:
    sessions.check_read_name(name)
    found = sessions.user_store(session, device.user).exists(name)
    return Response(status_code=200 if found else 404)


@router.get("/snapshots")
def snapshots(
    device: CurrentDevice,
    session: DbSession,
    device_id: int | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[SnapshotOut]:
    """The catalogue of this device's user (every device of theirs, or one)."""
    rows = catalogue.list_snapshots(
        session, user_id=device.user_id, device_id=device_id, limit=limit
    )
    return [SnapshotOut.model_validate(r) for r in rows]


@router.post("/restore-plan/status", status_code=status.HTTP_204_NO_CONTENT)
def restore_plan_status(body: RestoreOutcomeIn, device: CurrentDevice, session: DbSession) -> None:
    """How executing this device's replacement restore plan went."""
    sessions.record_restore_outcome(session, device, body.status, body.detail)
