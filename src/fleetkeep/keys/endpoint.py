"""``/connector/v1``: the WebSocket that key connectors dial out to.

Protocol (JSON text frames; binary values base64):

1. connector → ``{"type": "hello", "host", "version", "kcvs": [...], "current_kcv"}`` with
   ``Authorization: Bearer fkc_…`` on the upgrade request;
2. server → ``{"type": "welcome", "session": id}`` or ``{"type": "error", "code", "message"}``
   and close (4401 bad token, 4409 different key, 4400 bad hello);
3. server → ``{"type": "wrap" | "unwrap", "id", "kcv", "context", "data"}``, connector →
   ``{"type": "result", "id", "data"}`` or ``{"type": "error", "id", "code", "message"}``.

Liveness is WebSocket ping/pong; the session row's ``last_seen_at`` is refreshed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from fleetkeep.db import transaction, utcnow
from fleetkeep.errors import FleetkeepError
from fleetkeep.keys.errors import ConnectorTokenInvalid, KeyCheckMismatch
from fleetkeep.keys.hub import ConnectorHub, ConnectorLink, LinkLost, SendJson, process_hub
from fleetkeep.keys.service import Hello, admit_connector, connector_gone, touch_connector

log = logging.getLogger("fleetkeep.keys.connector")
router = APIRouter()

HELLO_TIMEOUT = 10.0
TOUCH_EVERY = 30.0
_CLOSE_CODES = {ConnectorTokenInvalid: 4401, KeyCheckMismatch: 4409}


@router.websocket("/connector/v1")
async def connector_socket(websocket: WebSocket) -> None:
    factory: sessionmaker[Session] = websocket.app.state.sessionmaker
    hub = process_hub()
    header = websocket.headers.get("authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else None
    remote = websocket.client.host if websocket.client else ""
    await websocket.accept()
    try:
        hello = Hello.parse(await asyncio.wait_for(websocket.receive_json(), HELLO_TIMEOUT))
        session_id = await run_in_threadpool(_admit, factory, token, hello, remote)
    except FleetkeepError as exc:
        log.warning("key connector refused", extra={"code": exc.code, "remote": remote})
        await _refuse(websocket, exc)
        return
    except (TimeoutError, WebSocketDisconnect, ValueError):
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(4400, "no valid hello")
        return
    link = ConnectorLink(
        session_id,
        hello.host,
        hello.version,
        hello.kcvs,
        hello.current_kcv,
        utcnow(),
        _sender(websocket),
    )
    hub.attach(link)
    log.info(
        "key connector connected",
        extra={"host": hello.host, "session": session_id, "remote": remote},
    )
    toucher = asyncio.create_task(_touch_forever(factory, session_id, websocket))
    try:
        await link.send({"type": "welcome", "session": session_id})
        await _receive(websocket, hub, link)
    finally:
        toucher.cancel()
        hub.detach(link)
        log.info("key connector disconnected", extra={"host": hello.host, "session": session_id})
        await run_in_threadpool(_gone, factory, session_id, hub)


def _sender(websocket: WebSocket) -> SendJson:
    """``send_json`` that reports a closed socket as ``LinkLost``, so requests fail over."""

    async def send(message: dict[str, Any]) -> None:
        try:
            await websocket.send_json(message)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise LinkLost(f"the connection closed ({type(exc).__name__})") from None

    return send


async def _receive(websocket: WebSocket, hub: ConnectorHub, link: ConnectorLink) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message: Any = await websocket.receive_json()
            if isinstance(message, dict):
                hub.deliver(link, message)


async def _refuse(websocket: WebSocket, exc: FleetkeepError) -> None:
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.send_json({"type": "error", "code": exc.code, "message": exc.detail})
        await websocket.close(_CLOSE_CODES.get(type(exc), 4400), exc.code)


async def _touch_forever(
    factory: sessionmaker[Session], session_id: int, websocket: WebSocket
) -> None:
    """Keep the session row fresh for ``keys status``; drop the connector if revoked."""
    while True:
        await asyncio.sleep(TOUCH_EVERY)
        if not await run_in_threadpool(_touch, factory, session_id):
            log.warning("key connector token revoked; closing", extra={"session": session_id})
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await websocket.close(4401, "connector_token_revoked")
            return


def _admit(factory: sessionmaker[Session], token: str | None, hello: Hello, remote: str) -> int:
    with transaction(factory) as session:
        return admit_connector(session, token, hello, remote)


def _touch(factory: sessionmaker[Session], session_id: int) -> bool:
    with transaction(factory) as session:
        return touch_connector(session, session_id)


def _gone(factory: sessionmaker[Session], session_id: int, hub: ConnectorHub) -> None:
    with transaction(factory) as session:
        connector_gone(session, session_id, hub.links())
