"""The listening socket of ``fleetkeep serve --workers N``: one per worker, spread by the kernel."""

from __future__ import annotations

import socket
from typing import Any


class WorkerSocket(socket.socket):
    """A listening address that every worker process binds for itself (``SO_REUSEPORT``).

    Why: with one shared socket, whichever worker wakes first accepts every pending connection,
    so a burst of keep-alive connections (an identity provider's, a proxy's) lands in one
    worker while the others idle (the SCIM bench saw 32 of 32 in one of two workers, at half
    the throughput). With a socket of its own in each worker, the kernel spreads new
    connections over them by a hash of the address pair.

    uvicorn hands its sockets to the workers it spawns by pickling them; this one pickles as
    its address, and unpickling it in a worker binds that worker's own socket. The parent's is
    bound only so that a taken port fails at once; it never listens, so it gets no connections.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (bind_worker_socket, (self.family, self.getsockname()))


def bind_worker_socket(family: int, address: Any) -> WorkerSocket:
    sock = WorkerSocket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.set_inheritable(True)
    return sock
