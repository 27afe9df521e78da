"""The connector hub: multiplexes wrap/unwrap requests over the connected key connectors.

Every request carries an id; a connector answers in any order. A request goes to a connector
that holds the needed key (by key check value), round robin; when that connector disconnects
or times out, the request fails over to the next one, and when none is left it fails with
``KeyProviderNotConnected``.

One hub per process, holding the connectors connected to *this* replica. With several
replicas, each replica needs its own connection: run the connector with one ``--server`` per
replica's direct address (not the load balancer's); a replica that no connector reached
answers ``key_provider_not_connected``. Requests are not relayed between replicas.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from fleetkeep.errors import FleetkeepError
from fleetkeep.keys.errors import KeyCheckMismatch, KeyProviderNotConnected, WrappedKeyInvalid

log = logging.getLogger("fleetkeep.keys.hub")

SendJson = Callable[[dict[str, Any]], Awaitable[None]]


class LinkLost(Exception):
    """The connector went away before answering."""


@dataclass(eq=False)
class ConnectorLink:
    """One connected key connector."""

    session_id: int
    host: str
    version: str
    kcvs: frozenset[str]
    current_kcv: str
    connected_at: datetime
    send_json: SendJson
    pending: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, message: dict[str, Any]) -> None:
        async with self.lock:
            await self.send_json(message)


@dataclass(frozen=True)
class LinkInfo:
    session_id: int
    host: str
    version: str
    kcvs: frozenset[str]
    current_kcv: str
    connected_at: datetime


class ConnectorHub:
    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.loop: asyncio.AbstractEventLoop | None = None
        self._links: dict[int, ConnectorLink] = {}
        self._ids = itertools.count(1)
        self._turn = itertools.count()
        self._on_empty: list[Callable[[], None]] = []
        self._guard = threading.Lock()

    # --- connections (called on the event loop) ---------------------------------------------

    def attach(self, link: ConnectorLink) -> None:
        self.loop = asyncio.get_running_loop()
        with self._guard:
            self._links[link.session_id] = link

    def detach(self, link: ConnectorLink) -> None:
        with self._guard:
            self._links.pop(link.session_id, None)
            empty = not self._links
        for future in link.pending.values():
            if not future.done():
                future.set_exception(LinkLost(f"connector {link.host} disconnected"))
        link.pending.clear()
        if empty:
            for listener in list(self._on_empty):
                listener()

    def deliver(self, link: ConnectorLink, message: dict[str, Any]) -> None:
        future = link.pending.pop(str(message.get("id")), None)
        if future is not None and not future.done():
            future.set_result(message)

    def on_empty(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever the last connector disconnects (to wipe cached DEKs)."""
        self._on_empty.append(listener)

    def links(self) -> list[LinkInfo]:
        with self._guard:
            return [
                LinkInfo(k.session_id, k.host, k.version, k.kcvs, k.current_kcv, k.connected_at)
                for k in self._links.values()
            ]

    # --- requests ----------------------------------------------------------------------------

    async def request(self, op: str, kcv: str, context: str, payload: bytes) -> bytes:
        """Send ``op`` (wrap or unwrap) to a connector holding ``kcv``; fail over on loss."""
        with self._guard:
            holders = [k for k in self._links.values() if kcv in k.kcvs]
            others = len(self._links) - len(holders)
        if not holders:
            if others:
                raise KeyCheckMismatch(
                    f"{others} connector(s) connected, but none holds the key with check value "
                    f"{kcv}: give them the organization's key file"
                )
            raise KeyProviderNotConnected(
                "no key connector is connected to this server; start 'fleetkeep key-connector'"
                " on the customer side (its log says why it cannot connect)"
            )
        start = next(self._turn) % len(holders)
        reasons = []
        for link in holders[start:] + holders[:start]:
            try:
                return await self._ask(link, op, kcv, context, payload)
            except (LinkLost, TimeoutError) as exc:
                reasons.append(f"{link.host}: {exc or 'timed out'}")
        raise KeyProviderNotConnected("no key connector answered (" + "; ".join(reasons) + ")")

    async def _ask(
        self, link: ConnectorLink, op: str, kcv: str, context: str, payload: bytes
    ) -> bytes:
        request_id = str(next(self._ids))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        link.pending[request_id] = future
        # A timer on the answer's own future rather than ``wait_for``: one loop iteration
        # fewer between the connector's answer and the caller (the unwrap latency tail).
        timer = loop.call_later(self.timeout, _expire, future)
        message = {
            "type": op,
            "id": request_id,
            "kcv": kcv,
            "context": context,
            "data": base64.b64encode(payload).decode(),
        }
        try:
            await link.send(message)
            answer = await future
        except (OSError, RuntimeError) as exc:
            raise LinkLost(f"send failed: {type(exc).__name__}") from None
        finally:
            timer.cancel()
            link.pending.pop(request_id, None)
        return _result(answer, context)

    def call(self, op: str, kcv: str, context: str, payload: bytes) -> bytes:
        """``request`` for synchronous callers (services run in worker threads)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            raise KeyProviderNotConnected(
                "no key connector is connected to this process; connectors connect to "
                "'fleetkeep serve', so run connector operations there "
                "(e.g. POST /api/v1/keys/rotate)"
            )
        future = asyncio.run_coroutine_threadsafe(self.request(op, kcv, context, payload), loop)
        try:
            return future.result(self.timeout * 3 + 1)
        except TimeoutError:
            future.cancel()
            raise KeyProviderNotConnected("the key connector request timed out") from None


def _expire(future: asyncio.Future[dict[str, Any]]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _result(answer: dict[str, Any], context: str) -> bytes:
    if answer.get("type") == "result" and isinstance(answer.get("data"), str):
        return base64.b64decode(answer["data"])
    code, message = str(answer.get("code", "error")), str(answer.get("message", ""))
    if code == "unwrap_failed":
        raise WrappedKeyInvalid(f"{context}: {message}")
    if code == "unknown_key":
        raise KeyCheckMismatch(message)
    raise FleetkeepError(f"the key connector refused the request: {message}", code=code)


@lru_cache(maxsize=1)
def process_hub() -> ConnectorHub:
    """The hub of this process; connectors attach to it through ``/connector/v1``."""
    return ConnectorHub()
