"""The connector hub: ids, timeouts, fail-over and refusal, without a network."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fleetkeep.db import utcnow
from fleetkeep.keys.errors import KeyCheckMismatch, KeyProviderNotConnected, WrappedKeyInvalid
from fleetkeep.keys.hub import ConnectorHub, ConnectorLink, LinkLost


def _link(hub: ConnectorHub, session_id: int, behaviour: str, kcv: str = "k1") -> ConnectorLink:
    """A link whose far end answers ``echo``, stays ``silent``, is ``closed`` (sending fails,
    as when a killed connector's socket is written to), or says ``unwrap_failed``."""

    async def send(message: dict[str, Any]) -> None:
        if behaviour == "silent":
            return
        if behaviour == "closed":
            raise LinkLost("the connection closed")
        if behaviour == "echo":
            answer = {"type": "result", "id": message["id"], "data": message["data"]}
        else:
            answer = {"type": "error", "id": message["id"], "code": behaviour, "message": "no"}
        asyncio.get_running_loop().call_soon(hub.deliver, link, answer)

    link = ConnectorLink(
        session_id, f"host-{session_id}", "t", frozenset({kcv}), kcv, utcnow(), send
    )
    return link


def test_a_silent_connector_times_out_and_the_request_fails_over() -> None:
    async def scenario() -> bytes:
        hub = ConnectorHub(timeout=0.05)
        hub.attach(_link(hub, 1, "silent"))
        hub.attach(_link(hub, 2, "echo"))
        return [await hub.request("unwrap", "k1", "user:1", b"abc") for _ in range(4)][-1]

    assert asyncio.run(scenario()) == b"abc"


def test_a_closed_socket_fails_over_and_alone_is_not_connected() -> None:
    async def scenario(*behaviours: str) -> bytes:
        hub = ConnectorHub(timeout=1)
        for i, behaviour in enumerate(behaviours):
            hub.attach(_link(hub, i, behaviour))
        return await hub.request("wrap", "k1", "user:1", b"abc")

    assert asyncio.run(scenario("closed", "echo")) == b"abc"
    with pytest.raises(KeyProviderNotConnected, match="connection closed"):
        asyncio.run(scenario("closed"))


def test_when_every_connector_is_silent_the_error_names_them() -> None:
    async def scenario() -> None:
        hub = ConnectorHub(timeout=0.05)
        hub.attach(_link(hub, 1, "silent"))
        hub.attach(_link(hub, 2, "silent"))
        await hub.request("unwrap", "k1", "user:1", b"abc")

    with pytest.raises(KeyProviderNotConnected, match=r"no key connector answered .*host-1"):
        asyncio.run(scenario())


def test_a_lost_connector_fails_its_pending_requests_over() -> None:
    async def scenario() -> bytes:
        hub = ConnectorHub(timeout=5)
        dying = _link(hub, 1, "silent")
        hub.attach(dying)  # attached first: a fresh hub's first request goes to it
        hub.attach(_link(hub, 2, "echo"))
        pending = asyncio.create_task(hub.request("wrap", "k1", "user:1", b"xyz"))
        await asyncio.sleep(0.01)
        assert dying.pending, "the request should be waiting on the dying connector"
        hub.detach(dying)
        return await pending

    assert asyncio.run(scenario()) == b"xyz"


def test_connector_errors_map_to_precise_errors() -> None:
    async def ask(behaviour: str, kcv: str = "k1") -> bytes:
        hub = ConnectorHub(timeout=1)
        hub.attach(_link(hub, 1, behaviour))
        return await hub.request("unwrap", kcv, "user:7", b"abc")

    with pytest.raises(WrappedKeyInvalid, match="user:7"):
        asyncio.run(ask("unwrap_failed"))
    with pytest.raises(KeyCheckMismatch, match="none holds the key with check value k2"):
        asyncio.run(ask("echo", kcv="k2"))


def test_the_last_disconnect_tells_listeners_and_sync_callers_fail_fast() -> None:
    hub = ConnectorHub(timeout=1)
    emptied: list[bool] = []
    hub.on_empty(lambda: emptied.append(True))

    async def scenario() -> None:
        first, second = _link(hub, 1, "echo"), _link(hub, 2, "echo")
        hub.attach(first)
        hub.attach(second)
        hub.detach(first)
        assert emptied == []
        hub.detach(second)

    asyncio.run(scenario())
    assert emptied == [True]
    with pytest.raises(KeyProviderNotConnected):
        hub.call("unwrap", "k1", "user:1", b"\0")
