"""A Microsoft identity platform + Microsoft Graph double, after the documented wire formats.

- ``GET /{tenant}/v2.0/.well-known/openid-configuration`` (what MSAL reads first)
- ``POST /{tenant}/oauth2/v2.0/token`` client-credentials grant (``invalid_client`` on a bad
  secret, AADSTS text like the real one)
- ``GET /v1.0/users`` with ``$select``/``$top`` and ``@odata.nextLink`` (``$skiptoken``)
- ``GET /v1.0/users/delta``: ``$top`` ignored, page size from ``Prefer: odata.maxpagesize``,
  opaque ``$skiptoken``/``$deltatoken`` links; changes since a delta token come back as the id
  and the changed properties only, removed users as ``{"id", "@removed": {"reason": ...}}``
- ``GET /v1.0/groups/{id}`` and ``/v1.0/groups/{id}/transitiveMembers/microsoft.graph.user``
  (nested groups flattened, users once)
- Faults on demand: 429 with ``Retry-After``, 5xx, revoked tokens (401
  ``InvalidAuthenticationToken``), expired delta tokens (410 ``syncStateNotFound``).
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

TENANT = "contoso.onmicrosoft.com"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
CLIENT_SECRET = "graph-double-secret"


@dataclass
class Fault:
    path_part: str
    status: int
    times: int
    retry_after: str | None = None


@dataclass
class GraphDouble:
    base_url: str = ""
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = 0
    # uid -> version it was created at / property -> version it last changed at
    created: dict[str, int] = field(default_factory=dict)
    changed: dict[str, dict[str, int]] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)
    token_requests: int = 0
    faults: list[Fault] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    request_times: list[float] = field(default_factory=list)
    expired_delta_tokens: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # Directory content -------------------------------------------------------------------------

    def add_user(self, upn: str, **props: Any) -> str:
        uid = f"{next(self._ids):08d}-aaaa-bbbb-cccc-{hash(upn) & 0xFFFFFFFFFFFF:012x}"
        user = {
            "id": uid,
            "userPrincipalName": upn,
            "mail": upn,
            "displayName": upn.split("@")[0].title(),
            "accountEnabled": True,
            "otherMails": [],
        } | props
        with self.lock:
            self.users[uid] = user
            self.version += 1
            self.created[uid] = self.version
            self.changed[uid] = {}
            self.removed.pop(uid, None)
        return uid

    def update_user(self, uid: str, **props: Any) -> None:
        with self.lock:
            self.users[uid].update(props)
            self.version += 1
            self.changed[uid].update(dict.fromkeys(props, self.version))

    def delete_user(self, uid: str) -> None:
        with self.lock:
            del self.users[uid]
            self.version += 1
            self.removed[uid] = self.version
            self.created.pop(uid, None)
            self.changed.pop(uid, None)
            for group in self.groups.values():
                if uid in group["members"]:
                    group["members"].remove(uid)

    def add_group(self, name: str, members: list[str], kind: str = "security") -> str:
        gid = f"{next(self._ids):08d}-9999-8888-7777-666666666666"
        types = {
            "microsoft365": (["Unified"], True, False),
            "security": ([], False, True),
            "distribution": ([], True, False),
            "mail-security": ([], True, True),
        }[kind]
        self.groups[gid] = {
            "id": gid,
            "displayName": name,
            "groupTypes": types[0],
            "mailEnabled": types[1],
            "securityEnabled": types[2],
            "members": list(members),
        }
        return gid

    # Faults ------------------------------------------------------------------------------------

    def fail(
        self, path_part: str, status: int, times: int = 1, retry_after: str | None = None
    ) -> None:
        self.faults.append(Fault(path_part, status, times, retry_after))

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    def _fault(self, path: str) -> JSONResponse | None:
        for fault in self.faults:
            if fault.path_part in path and fault.times > 0:
                fault.times -= 1
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
                code = "TooManyRequests" if fault.status == 429 else "ServiceUnavailable"
                return _error(fault.status, code, "injected fault", headers)
        return None

    # The app -----------------------------------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/{tenant}/v2.0/.well-known/openid-configuration", self.openid),
                Route("/{tenant}/oauth2/v2.0/token", self.token, methods=["POST"]),
                Route("/v1.0/users", self.list_users),
                Route("/v1.0/users/delta", self.delta),
                Route("/v1.0/groups/{gid}", self.get_group),
                Route(
                    "/v1.0/groups/{gid}/transitiveMembers/microsoft.graph.user",
                    self.transitive_members,
                ),
            ]
        )

    async def openid(self, request: Request) -> JSONResponse:
        tenant = request.path_params["tenant"]
        root = f"{self.base_url}/{tenant}"
        return JSONResponse(
            {
                "token_endpoint": f"{root}/oauth2/v2.0/token",
                "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
                "issuer": f"{root}/v2.0",
                "token_endpoint_auth_methods_supported": ["client_secret_post"],
                "response_types_supported": ["code", "id_token", "token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
            }
        )

    async def token(self, request: Request) -> JSONResponse:
        form = await request.form()
        self.token_requests += 1
        if request.path_params["tenant"] != TENANT:
            return JSONResponse(
                {"error": "invalid_request", "error_description": "AADSTS90002: Tenant not found."},
                status_code=400,
            )
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return JSONResponse(
                {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.",
                },
                status_code=401,
            )
        if not str(form.get("scope", "")).endswith("/.default"):
            return JSONResponse({"error": "invalid_scope"}, status_code=400)
        token = f"graph-token-{self.token_requests}"
        self.tokens.add(token)
        return JSONResponse(
            {
                "token_type": "Bearer",
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": token,
            }
        )

    def _guard(self, request: Request) -> JSONResponse | None:
        self.requests.append(str(request.url.path) + "?" + str(request.url.query))
        self.request_times.append(time.monotonic())
        fault = self._fault(request.url.path)
        if fault is not None:
            return fault
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer ") or header[7:] not in self.tokens:
            return _error(
                401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."
            )
        return None

    def _page(self, request: Request, items: list[dict[str, Any]], path: str) -> dict[str, Any]:
        params = request.query_params
        top = min(int(params.get("$top", "100")), 999)
        skip = int(params.get("$skiptoken", "0"))
        select = [f for f in params.get("$select", "").split(",") if f]
        page = [_project(item, select) for item in items[skip : skip + top]]
        body: dict[str, Any] = {
            "@odata.context": f"{self.base_url}/v1.0/$metadata#users",
            "value": page,
        }
        if skip + top < len(items):
            query = {"$skiptoken": str(skip + top), "$top": str(top)}
            if select:
                query["$select"] = ",".join(select)
            body["@odata.nextLink"] = f"{self.base_url}{path}?{urlencode(query)}"
        return body

    async def list_users(self, request: Request) -> JSONResponse:
        refused = self._guard(request)
        if refused:
            return refused
        with self.lock:
            items = sorted(self.users.values(), key=lambda u: u["id"])
        return JSONResponse(self._page(request, items, "/v1.0/users"))

    async def delta(self, request: Request) -> JSONResponse:
        """``/users/delta``: a full pass, or the changes since ``$deltatoken``, paged.

        Like Graph: ``$top`` is ignored (the page size comes from ``Prefer:
        odata.maxpagesize``); the paging and delta links are opaque tokens that carry the
        ``$select``; a changed user comes back with its id and the changed properties only; a
        deleted one as ``{"id", "@removed"}``.
        """
        refused = self._guard(request)
        if refused:
            return refused
        params = request.query_params
        if "$skiptoken" in params:
            since, offset, fields = _unpack(params["$skiptoken"])
        elif "$deltatoken" in params:
            if self.expired_delta_tokens:
                return _error(410, "syncStateNotFound", "The sync state is no longer valid.")
            (since, _, fields), offset = _unpack(params["$deltatoken"]), 0
        else:
            since, offset = -1, 0
            fields = [f for f in params.get("$select", "").split(",") if f]
        size = _max_page_size(request.headers.get("prefer", ""))
        with self.lock:
            items = self._delta_items(since, fields)
            version = self.version
        page = items[offset : offset + size]
        body: dict[str, Any] = {
            "@odata.context": f"{self.base_url}/v1.0/$metadata#users(delta)",
            "value": page,
        }
        if offset + size < len(items):
            token = _pack(since, offset + size, fields)
            body["@odata.nextLink"] = f"{self.base_url}/v1.0/users/delta?$skiptoken={token}"
        else:
            token = _pack(version, 0, fields)
            body["@odata.deltaLink"] = f"{self.base_url}/v1.0/users/delta?$deltatoken={token}"
        return JSONResponse(body)

    def _delta_items(self, since: int, fields: list[str]) -> list[dict[str, Any]]:
        found = []
        for uid, user in sorted(self.users.items()):
            if self.created[uid] > since:
                found.append(_project(user, fields))
                continue
            props = [p for p, v in self.changed[uid].items() if v > since]
            wanted = [p for p in props if not fields or p in fields]
            if wanted:
                found.append({"id": uid} | {p: user.get(p) for p in wanted})
        removed = sorted(uid for uid, v in self.removed.items() if v > since)
        return found + [{"id": uid, "@removed": {"reason": "deleted"}} for uid in removed]

    async def get_group(self, request: Request) -> JSONResponse:
        refused = self._guard(request)
        if refused:
            return refused
        group = self.groups.get(request.path_params["gid"])
        if group is None:
            return _error(
                404,
                "Request_ResourceNotFound",
                f"Resource '{request.path_params['gid']}' does not exist.",
            )
        return JSONResponse({k: v for k, v in group.items() if k != "members"})

    async def transitive_members(self, request: Request) -> JSONResponse:
        refused = self._guard(request)
        if refused:
            return refused
        gid = request.path_params["gid"]
        if gid not in self.groups:
            return _error(404, "Request_ResourceNotFound", f"Resource '{gid}' does not exist.")
        found: dict[str, dict[str, Any]] = {}
        pending, seen = [gid], set()
        with self.lock:
            while pending:
                current = pending.pop()
                if current in seen:
                    continue
                seen.add(current)
                for member in self.groups[current]["members"]:
                    if member in self.groups:
                        pending.append(member)
                    elif member in self.users:
                        found[member] = self.users[member]
        items = sorted(found.values(), key=lambda u: u["id"])
        return JSONResponse(self._page(request, items, request.url.path))


def _pack(version: int, offset: int, fields: list[str]) -> str:
    raw = json.dumps([version, offset, fields]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unpack(token: str) -> tuple[int, int, list[str]]:
    version, offset, fields = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    return int(version), int(offset), list(fields)


def _max_page_size(prefer: str) -> int:
    for part in prefer.split(","):
        name, _, value = part.strip().partition("=")
        if name == "odata.maxpagesize" and value.isdigit():
            return min(int(value), 999)
    return 200


def _project(item: dict[str, Any], select: list[str]) -> dict[str, Any]:
    if not select:
        return dict(item)
    return {k: item.get(k) for k in ["id", *select] if k == "id" or k in select}


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "innerError": {"request-id": "double"}}},
        status_code=status,
        headers=headers,
    )
