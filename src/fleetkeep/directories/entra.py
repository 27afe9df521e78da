"""Microsoft Entra ID as a directory source, read through Microsoft Graph with app credentials.

Scope: the members of the configured groups (Microsoft 365, security, distribution and
mail-enabled security groups alike; nested groups through ``/groups/{id}/transitiveMembers``),
or, with no groups configured, every user (mappings then select by attribute). Users feed the
shared plan/apply core (``sync.run_sync``): priority, region, quota, safety hold, dry run and
history are the core's.

Whole-tenant imports use Graph delta queries: the first sync reads ``/users/delta`` to the end
and keeps the ``@odata.deltaLink`` with a snapshot of what it saw; later syncs ask only for the
changes and merge them into the snapshot. Group imports read the groups in full each time
(membership deltas are not worth their complexity at our scale). A delta link Graph no longer
honours (HTTP 410) falls back to a full pass. The UPN is kept (``users.upn``) for mass
deployment (IMD v5). Authority and Graph base URLs are settings, for national clouds and tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msal  # type: ignore[import-untyped]
from sqlalchemy import ForeignKey, Text
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from fleetkeep.audit.service import Actor
from fleetkeep.db import Base, transaction, utcnow
from fleetkeep.directories import service as directories
from fleetkeep.directories.cloud import CloudReader, load_source, scheduled_sync
from fleetkeep.directories.ldap import FetchFailed
from fleetkeep.directories.models import Directory, DirectoryKind, SyncRun, SyncStatus
from fleetkeep.directories.sync import FetchResult, SourceUser, run_sync
from fleetkeep.errors import InvalidInput
from fleetkeep.jobs.scheduler import Job
from fleetkeep.settings import Settings

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_GRAPH = "https://graph.microsoft.com"
USER_FIELDS = (
    "id",
    "userPrincipalName",
    "mail",
    "otherMails",
    "displayName",
    "givenName",
    "surname",
    "accountEnabled",
    "department",
    "jobTitle",
    "employeeId",
    "companyName",
    "officeLocation",
    "onPremisesSamAccountName",
)
ATTRIBUTE_FIELDS = USER_FIELDS[1:]
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_SETTINGS = {
    "tenant_id",
    "client_id",
    "groups",
    "use_delta",
    "authority_url",
    "graph_url",
    "ca_file",
    "page_size",
}


class EntraState(Base):
    """Where the last good whole-tenant sync left Graph's delta query, and what it had seen."""

    __tablename__ = "entra_delta_state"

    directory_id: Mapped[int] = mapped_column(
        ForeignKey("directories.id", ondelete="CASCADE"), primary_key=True
    )
    delta_link: Mapped[str] = mapped_column(Text)
    snapshot: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


@dataclass(frozen=True)
class EntraConfig:
    tenant_id: str
    client_id: str
    groups: tuple[str, ...] = ()
    use_delta: bool = True
    authority_url: str = DEFAULT_AUTHORITY
    graph_url: str = DEFAULT_GRAPH
    ca_file: str = ""
    page_size: int = 999


def normalize_settings(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate Entra settings; errors name ``settings.<key>``."""
    unknown = set(raw) - _SETTINGS
    if unknown:
        raise InvalidInput(
            f"unknown Entra setting(s): {', '.join(sorted(unknown))}",
            field=f"settings.{min(unknown)}",
        )
    settings: dict[str, Any] = {
        "use_delta": True,
        "authority_url": DEFAULT_AUTHORITY,
        "graph_url": DEFAULT_GRAPH,
        "ca_file": "",
        "page_size": 999,
        "groups": [],
    } | raw
    for key in ("tenant_id", "client_id"):
        value = settings.get(key)
        if not isinstance(value, str) or not value.strip():
            raise InvalidInput(f"{key} is required", field=f"settings.{key}")
    if not _GUID.match(str(settings["client_id"])):
        raise InvalidInput(
            "client_id is the application (client) id, a GUID", field="settings.client_id"
        )
    groups: Any = settings["groups"]
    if not isinstance(groups, list) or not all(
        isinstance(g, str) and _GUID.match(g) for g in groups
    ):
        raise InvalidInput("groups is a list of group object ids (GUIDs)", field="settings.groups")
    for key in ("authority_url", "graph_url"):
        url = settings[key]
        if not isinstance(url, str) or not url.startswith("https://"):
            raise InvalidInput(f"{key} must be an https:// URL", field=f"settings.{key}")
        settings[key] = url.rstrip("/")
    if not isinstance(settings["page_size"], int) or not 1 <= settings["page_size"] <= 999:
        raise InvalidInput("page_size is 1 to 999", field="settings.page_size")
    if not isinstance(settings["use_delta"], bool):
        raise InvalidInput("use_delta is true or false", field="settings.use_delta")
    return settings


def config_of(directory: Directory) -> EntraConfig:
    s = directory.settings
    return EntraConfig(
        tenant_id=s["tenant_id"],
        client_id=s["client_id"],
        groups=tuple(s.get("groups") or ()),
        use_delta=bool(s.get("use_delta", True)),
        authority_url=s.get("authority_url", DEFAULT_AUTHORITY),
        graph_url=s.get("graph_url", DEFAULT_GRAPH),
        ca_file=s.get("ca_file", ""),
        page_size=int(s.get("page_size", 999)),
    )


def create_entra_directory(
    session: Session,
    actor: Actor,
    data_dir: Path,
    *,
    name: str,
    client_secret: str,
    settings: dict[str, Any],
    **fields: Any,
) -> Directory:
    if not client_secret:
        raise InvalidInput("client_secret is required", field="client_secret")
    return directories.create_directory(
        session,
        actor,
        data_dir,
        name=name,
        kind=DirectoryKind.ENTRA,
        secret=client_secret,
        settings=normalize_settings(settings),
        **fields,
    )


# Reading Graph ------------------------------------------------------------------------------


class GraphReader:
    """Client-credentials tokens (MSAL) and paged Graph reads."""

    def __init__(self, config: EntraConfig, client_secret: str) -> None:
        self.config = config
        self.secret = client_secret
        self.reader = CloudReader(self._token, ca_file=config.ca_file)
        self._app = self._new_app()

    def _new_app(self) -> msal.ConfidentialClientApplication:
        custom = self.config.authority_url != DEFAULT_AUTHORITY
        return msal.ConfidentialClientApplication(
            self.config.client_id,
            client_credential=self.secret,
            authority=f"{self.config.authority_url}/{self.config.tenant_id}",
            instance_discovery=False if custom else None,
            # MSAL speaks through our httpx client, so ``ca_file`` applies to the token
            # endpoint too (requests would let REQUESTS_CA_BUNDLE override it).
            http_client=self.reader.http,
            timeout=30,
        )

    def _token(self, fresh: bool) -> str:
        if fresh:
            self._app = self._new_app()  # a new app has an empty token cache
        try:
            result = self._app.acquire_token_for_client([f"{self.config.graph_url}/.default"])
        except ValueError as exc:  # MSAL: authority unreachable or not an authority
            raise FetchFailed(f"Entra authority: {exc}", stage="auth") from None
        except Exception as exc:  # requests' connection errors
            raise FetchFailed(f"Entra authority unreachable: {exc}", stage="network") from None
        token = result.get("access_token") if isinstance(result, dict) else None
        if not token:
            error = result.get("error_description") or result.get("error") if result else None
            raise FetchFailed(f"Entra refused the app credentials: {error}", stage="auth")
        return str(token)

    def pages(
        self, url: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> tuple[list[Any], str | None]:
        """Every item of a paged collection, and its ``@odata.deltaLink`` if it has one."""
        items: list[Any] = []
        next_url: str | None = url
        while next_url:
            page = self.reader.get(next_url, params, headers)
            params = None  # the next link carries them
            items.extend(page.get("value") or [])
            next_url = page.get("@odata.nextLink")
            if "@odata.deltaLink" in page:
                return items, str(page["@odata.deltaLink"])
        return items, None

    def close(self) -> None:
        self.reader.close()


def _select(config: EntraConfig) -> dict[str, Any]:
    return {"$select": ",".join(USER_FIELDS), "$top": str(config.page_size)}


def _delta_paging(config: EntraConfig) -> dict[str, str]:
    """Delta queries ignore ``$top``; their page size is asked for with a ``Prefer`` header."""
    return {"Prefer": f"odata.maxpagesize={config.page_size}"}


def fetch_groups(graph: GraphReader) -> FetchResult:
    """Members (transitive) of each configured group; a user's groups are ids and names."""
    base = graph.config.graph_url + "/v1.0"
    users: dict[str, dict[str, Any]] = {}
    groups: dict[str, set[str]] = {}
    warnings = []
    for group_id in graph.config.groups:
        group = graph.reader.get(f"{base}/groups/{group_id}", {"$select": "id,displayName"})
        names = {group_id.lower(), str(group.get("displayName") or "").lower()} - {""}
        members, _ = graph.pages(
            f"{base}/groups/{group_id}/transitiveMembers/microsoft.graph.user",
            _select(graph.config),
        )
        if not members:
            warnings.append(f"group {group.get('displayName') or group_id} has no user members")
        for member in members:
            users[member["id"]] = member
            groups.setdefault(member["id"], set()).update(names)
    return FetchResult(
        [source_user(raw, groups.get(uid, set())) for uid, raw in users.items()], warnings=warnings
    )


@dataclass
class DeltaOutcome:
    snapshot: dict[str, dict[str, Any]]
    delta_link: str | None
    full: bool


def fetch_delta(graph: GraphReader, state: EntraState | None) -> tuple[FetchResult, DeltaOutcome]:
    """All users through ``/users/delta``: changes since the saved link, or a full pass."""
    base = graph.config.graph_url + "/v1.0"
    if state is not None:
        try:
            changes, link = graph.pages(state.delta_link, headers=_delta_paging(graph.config))
            snapshot = dict(state.snapshot)
            for change in changes:
                if "@removed" in change:
                    snapshot.pop(change["id"], None)
                else:
                    snapshot[change["id"]] = {**snapshot.get(change["id"], {}), **change}
            outcome = DeltaOutcome(snapshot, link, full=False)
            return _from_snapshot(snapshot), outcome
        except FetchFailed as exc:
            if exc.extra.get("status") not in (400, 404, 410):
                raise
    items, link = graph.pages(
        f"{base}/users/delta",
        {"$select": ",".join(USER_FIELDS)},
        headers=_delta_paging(graph.config),
    )
    snapshot = {u["id"]: u for u in items if "@removed" not in u}
    return _from_snapshot(snapshot), DeltaOutcome(snapshot, link, full=True)


def _from_snapshot(snapshot: dict[str, dict[str, Any]]) -> FetchResult:
    return FetchResult([source_user(raw, set()) for raw in snapshot.values()])


def source_user(raw: dict[str, Any], groups: set[str]) -> SourceUser:
    """A Graph user as the core sees it. Guests' ``#EXT#`` UPNs are not e-mail addresses."""
    upn = str(raw.get("userPrincipalName") or "")
    mail = raw.get("mail") or (upn if "@" in upn and "#EXT#" not in upn else None)
    sam = str(raw.get("onPremisesSamAccountName") or "")
    attributes = {
        key: [str(v) for v in value] if isinstance(value, list) else [str(value)]
        for key in ATTRIBUTE_FIELDS
        if (value := raw.get(key)) not in (None, "", [])
    }
    return SourceUser(
        external_id=str(raw["id"]),
        email=mail,
        other_emails=tuple(str(m) for m in raw.get("otherMails") or ()),
        username=sam or upn.split("@", 1)[0],
        display_name=str(raw.get("displayName") or ""),
        upn=upn or None,
        disabled=raw.get("accountEnabled") is False,
        attributes=attributes,
        groups=groups,
        sam_account_name=sam,
        domain=upn.split("@", 1)[1].lower() if "@" in upn else "",
    )


# Syncing ----------------------------------------------------------------------------------------


def sync_entra_directory(
    factory: sessionmaker[Session],
    actor: Actor,
    data_dir: Path,
    directory_id: int,
    *,
    dry_run: bool = False,
    trigger: str = "manual",
) -> SyncRun:
    """Fetch from Graph and run the core sync; a good whole-tenant run saves the delta link."""
    with factory() as session:
        directory, secret = load_source(session, data_dir, directory_id, DirectoryKind.ENTRA)
        config = config_of(directory)
        state = session.get(EntraState, directory_id)
        if state is not None:
            session.expunge(state)
    outcome: list[DeltaOutcome] = []

    def fetch() -> FetchResult:
        graph = GraphReader(config, secret)
        try:
            if config.groups:
                return fetch_groups(graph)
            if not config.use_delta:
                items, _ = graph.pages(f"{config.graph_url}/v1.0/users", _select(config))
                return FetchResult([source_user(raw, set()) for raw in items])
            result, delta = fetch_delta(graph, state)
            outcome.append(delta)
            return result
        finally:
            graph.close()

    run = run_sync(factory, actor, directory_id, fetch, dry_run=dry_run, trigger=trigger)
    if outcome and outcome[0].delta_link and run.status is SyncStatus.SUCCEEDED:
        with transaction(factory) as session:
            saved = session.get(EntraState, directory_id) or EntraState(directory_id=directory_id)
            saved.delta_link = outcome[0].delta_link
            saved.snapshot = outcome[0].snapshot
            saved.updated_at = utcnow()
            session.add(saved)
    return run


def entra_jobs(settings: Settings) -> list[Job]:
    return [
        scheduled_sync("entra-sync", DirectoryKind.ENTRA, sync_entra_directory, settings.data_dir)
    ]
