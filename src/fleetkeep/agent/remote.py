"""The user's repository on the server, as a ``Store`` the backup library runs against.

Reads go to ``/device/v1/repository/objects``; writes belong to a backup session: packs and
index files are uploaded as they are made, and the snapshot (the library writes it last) is
the session's commit. Every call is retried with exponential back-off on network errors,
5xx and 429, so a dropped connection or a restarting server only pauses a backup. Retrying
is safe because every object except ``config`` is named by its content.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import httpx

from fleetkeep.agent.client import TIMEOUT, DeviceClient, ServerRefused
from fleetkeep.backup.errors import BackupError, ObjectNotFound
from fleetkeep.backup.stores.base import ObjectInfo, Store, check_name

T = TypeVar("T")
OBJECTS = "/device/v1/repository/objects"
SESSIONS = "/device/v1/backup-sessions"


@dataclass(frozen=True)
class Backoff:
    """Waits of ``first`` * 2**n (with jitter) up to ``cap`` seconds, for ``attempts`` tries.

    The defaults ride out a server restart or a short network cut (about five minutes in
    all). ``FLEETKEEP_AGENT_RETRY_ATTEMPTS`` / ``FLEETKEEP_AGENT_RETRY_CAP`` override them.
    """

    attempts: int = 10
    first: float = 1.0
    cap: float = 60.0

    @classmethod
    def from_env(cls) -> Backoff:
        env = os.environ
        return cls(
            attempts=int(env.get("FLEETKEEP_AGENT_RETRY_ATTEMPTS", cls.attempts)),
            first=min(cls.first, float(env.get("FLEETKEEP_AGENT_RETRY_CAP", cls.cap))),
            cap=float(env.get("FLEETKEEP_AGENT_RETRY_CAP", cls.cap)),
        )

    def wait(self, attempt: int) -> float:
        base: float = min(self.cap, self.first * 2**attempt)
        return base * (0.5 + random.random() / 2)


def transient(exc: Exception) -> bool:
    """Worth retrying: the network, an overloaded or restarting server, a key provider away."""
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, ServerRefused) and (exc.status >= 500 or exc.status == 429)


def retrying(call: Callable[[], T], backoff: Backoff) -> T:
    for attempt in range(backoff.attempts):
        try:
            return call()
        except (httpx.TransportError, ServerRefused) as exc:
            if not transient(exc) or attempt == backoff.attempts - 1:
                raise
            time.sleep(backoff.wait(attempt))
    raise AssertionError("unreachable")


class UploadLimiter:
    """Spaces uploads so they average at most ``bytes_per_second`` (the bandwidth cap); shared
    by the upload threads. Whole objects are sent at line speed, with pauses between."""

    def __init__(self, bytes_per_second: float) -> None:
        self.rate = bytes_per_second
        self._lock = threading.Lock()
        self._free_at = time.monotonic()

    def take(self, size: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(self._free_at, now)
            self._free_at = start + size / self.rate
        if start > now:
            time.sleep(start - now)


class PackCache:
    """Whole packs, each fetched with one GET and kept in memory while a restore reads it.

    The restorer reads a pack in 1 MiB windows and its large blobs one by one: one request
    (and one token check on the server) each, 224 for a 200 MB restore. Here the first read
    of a pack, or the restorer's prefetch hint (sent as its walk queues a file, ahead of the
    writers), fetches the whole pack on a small pool, and every read of it is a slice.
    At most ``ahead`` hinted packs are fetched before the restorer reads them, and ``keep``
    packs (~16 MiB each) are held, least recently read dropped first.
    """

    def __init__(
        self, fetch: Callable[[str], bytes], *, workers: int = 2, ahead: int = 2, keep: int = 5
    ) -> None:
        self._fetch = fetch
        self._ahead = ahead
        self._keep = keep
        self._lock = threading.Lock()
        self._packs: OrderedDict[str, Future[bytes]] = OrderedDict()
        self._hinted: deque[str] = deque()
        self._unread: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._workers = workers

    def prefetch(self, name: str) -> None:
        with self._lock:
            if name not in self._packs:
                self._hinted.append(name)
                self._fetch_hinted()

    def read(self, name: str, offset: int, length: int) -> bytes:
        with self._lock:
            pack = self._packs.get(name)
            if pack is None:
                pack = self._start(name)
            else:
                self._packs.move_to_end(name)
            self._unread.discard(name)
            self._fetch_hinted()
        try:
            data = pack.result()
        except BaseException:
            with self._lock:  # a failed fetch is not kept: the next read tries again
                if self._packs.get(name) is pack:
                    del self._packs[name]
            raise
        return data[offset : offset + length]

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            self._packs.clear()
            self._hinted.clear()
            self._unread.clear()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _fetch_hinted(self) -> None:
        while self._hinted and len(self._unread) < self._ahead:
            name = self._hinted.popleft()
            if name not in self._packs:
                self._start(name)
                self._unread.add(name)

    def _start(self, name: str) -> Future[bytes]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="pack-fetch")
        pack = self._pool.submit(self._fetch, name)
        self._packs[name] = pack
        while len(self._packs) > self._keep:
            dropped, _ = self._packs.popitem(last=False)
            self._unread.discard(dropped)
        return pack


class ReadOnlyRepository(BackupError):
    code = "read_only_repository"


class VaultApi:
    """The device API calls of backups and restores, each retried."""

    def __init__(
        self,
        client: DeviceClient,
        backoff: Backoff | None = None,
        limiter: UploadLimiter | None = None,
    ) -> None:
        self.client = client
        self.backoff = backoff or Backoff.from_env()
        self.limiter = limiter
        # Set from the session's answer: packs go straight to the store (S3).
        self.direct = False

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        def once() -> httpx.Response:
            response = self.client.http.request(method, path, **kwargs)
            if response.is_success or (method == "HEAD" and response.status_code == 404):
                return response
            self.client.raise_refusal(response)

        return retrying(once, self.backoff)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(method, path, **kwargs).json()

    def begin(self) -> dict[str, Any]:
        # Not retried here: a refusal (quota, key provider away) is for the caller to report.
        return self.client.call("POST", SESSIONS)

    def upload(self, session_id: int, name: str, data: bytes | bytearray) -> bool:
        if self.limiter is not None:
            self.limiter.take(len(data))
        if self.direct and name.startswith("packs/"):
            return self._upload_direct(session_id, name, data)
        answer = self.json("PUT", f"{SESSIONS}/{session_id}/objects/{name}", **_body(data))
        return bool(answer["stored"])

    def _upload_direct(self, session_id: int, name: str, data: bytes | bytearray) -> bool:
        base = f"{SESSIONS}/{session_id}/direct-uploads"
        url = self.json("POST", base, json={"name": name, "size": len(data)})["url"]
        if url is None:
            return False

        def put() -> None:
            # Never the device token: the URL carries its own short-lived authorization.
            response = httpx.put(url, timeout=TIMEOUT, **_body(data))
            if not response.is_success:
                self.client.raise_refusal(response)

        retrying(put, self.backoff)
        self.json("POST", f"{base}/confirm", json={"name": name})
        return True

    def commit(self, session_id: int, snapshot_id: str, sealed: bytes) -> dict[str, Any]:
        answer: dict[str, Any] = self.json(
            "PUT", f"{SESSIONS}/{session_id}/snapshot/{snapshot_id}", content=sealed
        )
        return answer

    def progress(self, session_id: int, progress: dict[str, int]) -> None:
        """Best effort, once: progress is a courtesy and must never stall the backup."""
        with contextlib.suppress(httpx.HTTPError):
            self.client.http.post(f"{SESSIONS}/{session_id}/progress", json=progress, timeout=5.0)

    def abort(self, session_id: int, reason: str) -> None:
        # If this fails the server abandons the session when the device begins its next one.
        with contextlib.suppress(httpx.HTTPError):
            self.client.http.post(
                f"{SESSIONS}/{session_id}/abort", json={"reason": reason[:1000]}, timeout=10.0
            )

    def repository_key(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.json("POST", "/device/v1/repository/key")
        return answer

    def restore_plan_status(self, outcome: str, detail: str) -> None:
        self._send(
            "POST", "/device/v1/restore-plan/status", json={"status": outcome, "detail": detail}
        )

    def snapshots(self, device_id: int | None = None) -> list[dict[str, Any]]:
        params = {"device_id": device_id} if device_id is not None else {}
        found: list[dict[str, Any]] = self.json("GET", "/device/v1/snapshots", params=params)
        return found

    def get(self, name: str, byte_range: str | None = None) -> bytes:
        headers = {"Range": byte_range} if byte_range else {}
        try:
            return self._send("GET", f"{OBJECTS}/{name}", headers=headers).content
        except ServerRefused as exc:
            if exc.status == 404:
                raise ObjectNotFound(f"object {name} not found") from None
            raise

    def exists(self, name: str) -> bool:
        return self._send("HEAD", f"{OBJECTS}/{name}").status_code == 200

    def list(self, prefix: str) -> Iterator[dict[str, Any]]:
        after = ""
        while True:
            page = self.json("GET", OBJECTS, params={"prefix": prefix, "after": after})
            yield from page["items"]
            if not page.get("next_after"):
                return
            after = page["next_after"]


def _body(data: bytes | bytearray) -> dict[str, Any]:
    """Request arguments sending ``data`` without ``bytes(pack)`` (a 16 MiB copy per upload):
    httpx sends a list of one buffer as it is, and given its length does not chunk it."""
    return {"content": [memoryview(data)], "headers": {"Content-Length": str(len(data))}}


class RemoteStore(Store):
    """A ``Store`` over :class:`VaultApi`. Without a session it is read-only (restore)."""

    def __init__(self, api: VaultApi, session_id: int | None = None) -> None:
        self.api = api
        self.session_id = session_id
        self.committed: dict[str, Any] | None = None
        self.uploaded = 0
        self.uploaded_bytes = 0
        self.packs = PackCache(self.get)

    def put(self, name: str, data: bytes | bytearray) -> None:
        check_name(name)
        if self.session_id is None:
            raise ReadOnlyRepository("no backup session: the repository is read-only here")
        if name.startswith("snapshots/"):
            self.committed = self.api.commit(
                self.session_id, name.removeprefix("snapshots/"), bytes(data)
            )
            return
        if self.api.upload(self.session_id, name, data):
            self.uploaded += 1
            self.uploaded_bytes += len(data)

    def get(self, name: str) -> bytes:
        return self.api.get(check_name(name))

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        if offset < 0:
            return self.api.get(check_name(name), f"bytes={offset}")[:length]
        if name.startswith("packs/"):
            return self.packs.read(check_name(name), offset, length)
        return self.api.get(check_name(name), f"bytes={offset}-{offset + length - 1}")

    def prefetch(self, name: str) -> None:
        if name.startswith("packs/"):
            self.packs.prefetch(check_name(name))

    def close(self) -> None:
        """Stop the pack fetchers (restores)."""
        self.packs.close()

    def exists(self, name: str) -> bool:
        return self.api.exists(check_name(name))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        for item in self.api.list(prefix):
            yield ObjectInfo(
                item["name"], int(item["size"]), datetime.fromisoformat(item["modified"])
            )

    def delete(self, name: str) -> None:
        raise ReadOnlyRepository(
            "agents never delete from the repository (prune runs on the server)"
        )
