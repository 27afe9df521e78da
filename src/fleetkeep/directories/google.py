"""Google Workspace as a directory source: Admin SDK Directory API, service account + delegation.

The service account (its JSON key is the directory's sealed secret) signs a JWT-bearer grant
for an administrator it impersonates (domain-wide delegation, read-only scopes); google-auth
makes the assertion and we carry it over our own HTTPS client. Scope: every user of the
customer (or domain), or the members of selected groups (``includeDerivedMembership`` flattens
nested groups). Suspended or archived users are disabled at the source, so the core preserves
them; the organisational unit (``orgUnitPath``), department and title are attributes that
mapping rules can use. Syncs run on a schedule (the directory's interval) or on demand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from google.auth import exceptions as google_errors
from google.auth import transport
from google.oauth2 import service_account
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.audit.service import Actor
from fleetkeep.directories import service as directories
from fleetkeep.directories.cloud import CloudReader, load_source, scheduled_sync
from fleetkeep.directories.ldap import FetchFailed
from fleetkeep.directories.models import Directory, DirectoryKind, SyncRun
from fleetkeep.directories.sync import FetchResult, SourceUser, run_sync
from fleetkeep.errors import InvalidInput
from fleetkeep.jobs.scheduler import Job
from fleetkeep.settings import Settings

DEFAULT_API = "https://admin.googleapis.com"
SCOPES = (
    "https://www.googleapis.com/auth/admin.directory.user.readonly",
    "https://www.googleapis.com/auth/admin.directory.group.member.readonly",
    "https://www.googleapis.com/auth/admin.directory.group.readonly",
)
_SETTINGS = {"admin_email", "customer", "domain", "groups", "api_url", "token_uri", "ca_file"}
_KEY_FIELDS = ("type", "client_email", "private_key", "token_uri")


def normalize_settings(raw: dict[str, Any]) -> dict[str, Any]:
    unknown = set(raw) - _SETTINGS
    if unknown:
        raise InvalidInput(
            f"unknown Google setting(s): {', '.join(sorted(unknown))}",
            field=f"settings.{min(unknown)}",
        )
    settings: dict[str, Any] = {
        "customer": "my_customer",
        "domain": "",
        "groups": [],
        "api_url": DEFAULT_API,
        "token_uri": "",
        "ca_file": "",
    } | raw
    admin = settings.get("admin_email")
    if not isinstance(admin, str) or "@" not in admin:
        raise InvalidInput(
            "admin_email is the administrator the service account acts as",
            field="settings.admin_email",
        )
    groups: Any = settings["groups"]
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise InvalidInput("groups is a list of group emails or ids", field="settings.groups")
    for key in ("api_url", "token_uri"):
        url = settings[key]
        if url and (not isinstance(url, str) or not url.startswith("https://")):
            raise InvalidInput(f"{key} must be an https:// URL", field=f"settings.{key}")
    settings["api_url"] = str(settings["api_url"]).rstrip("/")
    return settings


def check_key(text: str) -> dict[str, Any]:
    """The service account JSON key, checked enough to give a precise error now, not at sync."""
    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"the service account key is not JSON: {exc}", field="service_account_key"
        ) from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise InvalidInput(
            'the key must be a service account JSON key ("type": "service_account")',
            field="service_account_key",
        )
    missing = [k for k in _KEY_FIELDS if not info.get(k)]
    if missing:
        raise InvalidInput(f"the key lacks {', '.join(missing)}", field="service_account_key")
    return info


def create_google_directory(
    session: Session,
    actor: Actor,
    data_dir: Path,
    *,
    name: str,
    service_account_key: str,
    settings: dict[str, Any],
    **fields: Any,
) -> Directory:
    check_key(service_account_key)
    return directories.create_directory(
        session,
        actor,
        data_dir,
        name=name,
        kind=DirectoryKind.GOOGLE,
        secret=service_account_key,
        settings=normalize_settings(settings),
        **fields,
    )


# Reading the Directory API --------------------------------------------------------------------


class _Response(transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class _Transport(transport.Request):
    """google-auth's request interface over our httpx client (so ``ca_file`` applies)."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _Response:
        try:
            return _Response(
                self.http.request(method, url, content=body, headers=headers, timeout=timeout or 30)
            )
        except httpx.TransportError as exc:
            raise google_errors.TransportError(str(exc)) from exc  # type: ignore[no-untyped-call]


class DirectoryReader:
    def __init__(self, settings: dict[str, Any], key: dict[str, Any]) -> None:
        self.settings = settings
        self.reader = CloudReader(self._token, ca_file=str(settings.get("ca_file") or ""))
        credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            key, scopes=list(SCOPES), subject=settings["admin_email"]
        )
        if settings.get("token_uri"):
            credentials = credentials.with_token_uri(settings["token_uri"])
        self.credentials = credentials
        self.base = f"{settings['api_url']}/admin/directory/v1"

    def _token(self, fresh: bool) -> str:
        if fresh or not self.credentials.valid:
            try:
                self.credentials.refresh(_Transport(self.reader.http))
            except google_errors.RefreshError as exc:
                raise FetchFailed(
                    f"Google refused the service account: {exc}", stage="auth"
                ) from None
            except google_errors.TransportError as exc:
                raise FetchFailed(
                    f"Google token endpoint unreachable: {exc}", stage="network"
                ) from None
        return str(self.credentials.token)

    def pages(self, url: str, params: dict[str, Any], key: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = self.reader.get(url, params | ({"pageToken": token} if token else {}))
            items.extend(page.get(key) or [])
            token = page.get("nextPageToken")
            if not token:
                return items

    def users(self) -> list[dict[str, Any]]:
        scope = (
            {"domain": self.settings["domain"]}
            if self.settings.get("domain")
            else {"customer": self.settings["customer"]}
        )
        params = scope | {"maxResults": "500", "projection": "full", "orderBy": "email"}
        return self.pages(f"{self.base}/users", params, "users")

    def group_members(self, group: str) -> list[dict[str, Any]]:
        params = {"maxResults": "200", "includeDerivedMembership": "true"}
        return self.pages(f"{self.base}/groups/{group}/members", params, "members")

    def close(self) -> None:
        self.reader.close()


def fetch(reader: DirectoryReader) -> FetchResult:
    """All users, or those in the selected groups (each user's groups: the selected ones)."""
    users = reader.users()
    selected: list[str] = list(reader.settings.get("groups") or [])
    if not selected:
        return FetchResult([source_user(u, set()) for u in users])
    memberships: dict[str, set[str]] = {}
    for group in selected:
        for member in reader.group_members(group):
            if member.get("type") == "USER":
                memberships.setdefault(str(member["id"]), set()).add(group.lower())
    return FetchResult(
        [source_user(u, memberships[u["id"]]) for u in users if u["id"] in memberships]
    )


def source_user(raw: dict[str, Any], groups: set[str]) -> SourceUser:
    email = str(raw.get("primaryEmail") or "")
    name = raw.get("name") or {}
    organization = next(
        (o for o in raw.get("organizations") or [] if o.get("primary")),
        (raw.get("organizations") or [{}])[0],
    )
    attributes: dict[str, list[str]] = {
        "primaryEmail": [email],
        "orgUnitPath": [str(raw.get("orgUnitPath") or "/")],
    }
    for key in ("department", "title", "costCenter", "location"):
        if organization.get(key):
            attributes[key] = [str(organization[key])]
    if raw.get("aliases"):
        attributes["aliases"] = [str(a) for a in raw["aliases"]]
    others = tuple(
        str(e["address"])
        for e in raw.get("emails") or []
        if e.get("address") and e.get("address") != email
    )
    return SourceUser(
        external_id=str(raw["id"]),
        email=email or None,
        other_emails=others,
        username=email.split("@", 1)[0],
        display_name=str(name.get("fullName") or ""),
        upn=email or None,
        disabled=bool(raw.get("suspended") or raw.get("archived")),
        attributes=attributes,
        groups=groups,
        domain=email.split("@", 1)[1].lower() if "@" in email else "",
    )


# Syncing ----------------------------------------------------------------------------------------


def sync_google_directory(
    factory: sessionmaker[Session],
    actor: Actor,
    data_dir: Path,
    directory_id: int,
    *,
    dry_run: bool = False,
    trigger: str = "manual",
) -> SyncRun:
    with factory() as session:
        directory, secret = load_source(session, data_dir, directory_id, DirectoryKind.GOOGLE)
        settings = dict(directory.settings)
        key = check_key(secret)

    def read() -> FetchResult:
        reader = DirectoryReader(settings, key)
        try:
            return fetch(reader)
        finally:
            reader.close()

    return run_sync(factory, actor, directory_id, read, dry_run=dry_run, trigger=trigger)


def google_jobs(settings: Settings) -> list[Job]:
    return [
        scheduled_sync(
            "google-sync", DirectoryKind.GOOGLE, sync_google_directory, settings.data_dir
        )
    ]
