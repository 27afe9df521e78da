"""Reading the JSON APIs of cloud directories (Microsoft Graph, Google Admin SDK) politely.

Both APIs throttle (429 + ``Retry-After``; Google also 403 ``userRateLimitExceeded`` or
``quotaExceeded``), fail transiently (5xx), and expire or revoke access tokens (401).
``CloudReader.get`` honours ``Retry-After``, backs off exponentially on throttling, 5xx and
network errors, and fetches a fresh token once after a 401; anything else, or running out of
attempts, is a ``FetchFailed`` naming the URL and what the service said, so a sync aborts and
changes nothing.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.audit.service import Actor
from fleetkeep.directories import service as directories
from fleetkeep.directories.credentials import unseal
from fleetkeep.directories.ldap import FetchFailed
from fleetkeep.directories.models import Directory, DirectoryKind, SyncRun
from fleetkeep.directories.sync import due_directories
from fleetkeep.errors import InvalidInput
from fleetkeep.jobs.scheduler import Job

log = logging.getLogger("fleetkeep.directories.cloud")

# Token provider: ``fresh=True`` must not return a cached token.
# A source's sync: (factory, actor, data_dir, directory_id, *, dry_run, trigger) -> SyncRun.
Sync = Callable[..., SyncRun]
TokenSource = Callable[[bool], str]
MAX_RETRY_AFTER = 120.0
# Google answers throttling with 403 and one of these reasons (Admin SDK "Limits and quotas").
RATE_LIMIT_REASONS = frozenset({"userRateLimitExceeded", "rateLimitExceeded", "quotaExceeded"})


class CloudReader:
    def __init__(
        self,
        tokens: TokenSource,
        *,
        ca_file: str = "",
        timeout: float = 30.0,
        attempts: int = 6,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.tokens = tokens
        self.attempts = attempts
        self.backoff = backoff
        self.sleep = sleep
        # A private CA (``ca_file``) for TLS-inspecting proxies, national clouds and tests.
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_file) if ca_file else True
        )
        self.http = httpx.Client(verify=verify, timeout=timeout)
        self.requests = 0
        self.throttled = 0

    def close(self) -> None:
        self.http.close()

    def get(
        self,
        url: str,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """GET a JSON object, retrying as the module docstring says."""
        refreshed = False
        token = self.tokens(False)
        for attempt in range(1, self.attempts + 1):
            self.requests += 1
            try:
                response = self.http.get(
                    url,
                    params=params,
                    headers={**(headers or {}), "Authorization": f"Bearer {token}"},
                )
            except httpx.TransportError as exc:
                if attempt == self.attempts:
                    raise FetchFailed(f"{url}: {exc}", stage="network") from None
                self.sleep(self._delay(attempt))
                continue
            status = response.status_code
            if status == 200:
                data = response.json()
                if not isinstance(data, dict):
                    raise FetchFailed(f"{url}: the answer is not a JSON object", stage="response")
                return data
            if status == 401 and not refreshed:
                refreshed = True
                token = self.tokens(True)
                continue
            if status == 429 or status >= 500 or _rate_limited(response):
                if attempt == self.attempts:
                    break
                if status < 500:
                    self.throttled += 1
                self.sleep(self._retry_after(response) or self._delay(attempt))
                continue
            raise FetchFailed(
                f"{url}: HTTP {status}: {_message(response)}",
                stage="auth" if status in (401, 403) else "request",
                status=status,
            )
        raise FetchFailed(
            f"{url}: still HTTP {response.status_code} after {self.attempts} attempts: "
            f"{_message(response)}",
            stage="throttled" if response.status_code < 500 else "unavailable",
            status=response.status_code,
        )

    def _delay(self, attempt: int) -> float:
        return float(min(self.backoff * 2 ** (attempt - 1), 30.0))

    @staticmethod
    def _retry_after(response: httpx.Response) -> float | None:
        value = response.headers.get("retry-after", "")
        try:
            return min(max(float(value), 0.0), MAX_RETRY_AFTER)
        except ValueError:
            return None


def _rate_limited(response: httpx.Response) -> bool:
    """Google's quota refusals: 403 with reason ``userRateLimitExceeded``, ``quotaExceeded``…"""
    if response.status_code != 403:
        return False
    try:
        error = response.json().get("error")
        reasons = {str(e.get("reason")) for e in error.get("errors") or []}
    except (ValueError, AttributeError, TypeError):
        return False
    return bool(reasons & RATE_LIMIT_REASONS)


def _message(response: httpx.Response) -> str:
    """The service's own error text (Graph: error.message; Google: error.message)."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:200]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or error)[:300]
    if isinstance(data, dict) and "error_description" in data:
        return str(data["error_description"])[:300]
    return str(error or data)[:300]


def load_source(
    session: Session, data_dir: Path, directory_id: int, kind: DirectoryKind
) -> tuple[Directory, str]:
    """The directory, checked to be of ``kind``, and its unsealed secret (kept in memory only)."""
    directory = directories.get_directory(session, directory_id)
    if directory.kind is not kind:
        raise InvalidInput(
            f"directory {directory.name!r} is of kind {directory.kind}, not {kind}",
            code="wrong_kind",
        )
    return directory, unseal(data_dir, directory.secret) if directory.secret else ""


def scheduled_sync(name: str, kind: DirectoryKind, sync: Sync, data_dir: Path) -> Job:
    """A job that syncs every enabled directory of ``kind`` whose interval has elapsed."""
    actor = Actor(f"system:{name}")

    def run(factory: sessionmaker[Session]) -> None:
        with factory() as session:
            due = due_directories(session, [kind.value])
        for directory_id in due:
            sync(factory, actor, data_dir, directory_id, trigger="schedule")

    # Checked every few minutes; each directory's own interval (default 24 h) decides.
    return Job(name, timedelta(minutes=5), run, lease=timedelta(minutes=30))
