"""The connector's connection loop: dial out, say hello, answer requests, reconnect."""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import logging
import random
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from fleetkeep import __version__
from fleetkeep.keys.keyfile import Ekey
from fleetkeep.keys.wrapping import UnwrapFailed, unwrap_dek, wrap_dek

log = logging.getLogger("fleetkeep.connector")

PATH = "/connector/v1"
MAX_MESSAGE = 64 * 1024


class ConnectorRefused(Exception):
    """The server refused this connector for a reason retrying cannot fix (token, key)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def socket_url(server: str, *, allow_insecure: bool = False) -> str:
    """``https://host`` → ``wss://host/connector/v1``; plain ``ws`` only to loopback."""
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise ValueError(f"not a server URL: {server!r}")
    secure = parts.scheme in ("https", "wss")
    if not secure and not allow_insecure and not _loopback(parts.hostname):
        raise ValueError(
            f"{server} is not encrypted: unwrapped keys would cross the network in clear; use "
            "https:// (or --allow-insecure on a network you trust)"
        )
    path = parts.path.rstrip("/") + PATH
    return urlunsplit(("wss" if secure else "ws", parts.netloc, path, "", ""))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Connector:
    """Serves one server URL until refused; ``keys`` maps key check values to keys."""

    url: str
    token: str
    keys: dict[str, Ekey]
    current_kcv: str
    max_backoff: float = 30.0
    served: int = 0

    async def run_forever(self) -> None:
        backoff = 0.5
        while True:
            try:
                async with connect(
                    self.url,
                    additional_headers={"Authorization": f"Bearer {self.token}"},
                    max_size=MAX_MESSAGE,
                    ping_interval=10,
                    ping_timeout=10,
                    open_timeout=10,
                ) as ws:
                    await self._hello(ws)
                    backoff = 0.5
                    await self._serve(ws)
            except ConnectorRefused:
                raise
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                log.warning(
                    "not connected to %s (%s); retrying in %.1fs",
                    self.url,
                    type(exc).__name__,
                    backoff,
                )
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self.max_backoff)

    async def _hello(self, ws: ClientConnection) -> None:
        await ws.send(
            json.dumps(
                {
                    "type": "hello",
                    "host": socket.gethostname(),
                    "version": __version__,
                    "kcvs": sorted(self.keys),
                    "current_kcv": self.current_kcv,
                }
            )
        )
        answer = json.loads(await asyncio.wait_for(ws.recv(), 15))
        if answer.get("type") == "error":
            raise ConnectorRefused(str(answer.get("code")), str(answer.get("message")))
        log.info("connected to %s (session %s)", self.url, answer.get("session"))

    async def _serve(self, ws: ClientConnection) -> None:
        async for frame in ws:
            try:
                request = json.loads(frame)
            except ValueError:
                continue
            if isinstance(request, dict):
                await ws.send(json.dumps(self.answer(request)))

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """The reply to one wrap/unwrap request; errors never echo key material."""
        request_id = request.get("id")
        op, kcv, context = request.get("type"), request.get("kcv"), request.get("context")
        key = self.keys.get(kcv) if isinstance(kcv, str) else None
        if key is None:
            return _error(
                request_id, "unknown_key", f"this connector holds no key with check value {kcv}"
            )
        if op not in ("wrap", "unwrap") or not isinstance(context, str):
            return _error(request_id, "bad_request", "expected a wrap or unwrap request")
        try:
            data = base64.b64decode(str(request.get("data", "")), validate=True)
            result = (
                wrap_dek(key.key, data, context)
                if op == "wrap"
                else unwrap_dek(key.key, data, context)
            )
        except UnwrapFailed as exc:
            return _error(request_id, "unwrap_failed", str(exc))
        except (binascii.Error, ValueError) as exc:
            return _error(request_id, "bad_request", str(exc))
        self.served += 1
        return {"type": "result", "id": request_id, "data": base64.b64encode(result).decode()}


def _error(request_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "id": request_id, "code": code, "message": message}


async def run_connectors(connectors: list[Connector]) -> None:
    """Serve every server URL at once; the first refusal stops all of them."""
    async with asyncio.TaskGroup() as group:
        for connector in connectors:
            group.create_task(connector.run_forever())
