"""A Microsoft identity platform + Microsoft Graph double, after the documented wire formats.

- ``GET /{tenant}/v2.0/.well-known/openid-configuration`` (what MSAL reads first)
- ``POST /{tenant}/oauth2/v2.0/token`` client-credentials grant (``invalid_client`` on a bad
  secret, AADSTS text like the real one)
- ``GET /v1.0/users`` and ``/v1.0/users/delta`` with ``$select``/``$top``, ``@odata.nextLink``
  (``$skiptoken``) and ``@odata.deltaLink`` (``$deltatoken``); changes since a delta token come
  back with their properties, removed users as ``{"id", "@removed": {"reason": "deleted"}}``
- ``GET /v1.0/groups/{id}`` and ``/v1.0/groups/{id}/transitiveMembers/microsoft.graph.user``
  (nested groups flattened, users once)
- Faults on demand: 429 with ``Retry-After``, 5xx, revoked tokens (401
  ``InvalidAuthenticationToken``), expired delta tokens (410 ``syncStateNotFound``).
"""

from __future__ import annotations

import itertools
import threading
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
    changed: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)
    token_requests: int = 0
    faults: list[Fault] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
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
            self._touch(uid)
        return uid

    def update_user(self, uid: str, **props: Any) -> None:
        with self.lock:
            self.users[uid].update(props)
            self._touch(uid)

    def delete_user(self, uid: str) -> None:
        with self.lock:
            del self.users[uid]
            self.version += 1
            self.removed[uid] = self.version
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

    def _touch(self, uid: str) -> None:
        self.version += 1
        self.changed[uid] = self.version
        self.removed.pop(uid, None)

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
        fault = self._fault(request.url.path)
        if fault is not None:
            return fault
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer ") or header[7:] not in self.tokens:
            return _error(
                401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."
            )
        return None

    def _page(
        self,
        request: Request,
        items: list[dict[str, Any]],
        path: str,
        extra: dict[str, str] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        params = request.query_params
        top = min(int(params.get("$top", "100")), 999)
        skip = int(params.get("$skiptoken", "0"))
        select = [f for f in params.get("$select", "").split(",") if f]
        page = [_project(item, select) for item in items[skip : skip + top]]
        body: dict[str, Any] = {
            "@odata.context": f"{self.base_url}/v1.0/$metadata#users",
            "value": page,
        }
        more = skip + top < len(items)
        if more:
            query = {"$skiptoken": str(skip + top), "$top": str(top)} | (extra or {})
            if select:
                query["$select"] = ",".join(select)
            body["@odata.nextLink"] = f"{self.base_url}{path}?{urlencode(query)}"
        return body, more

    async def list_users(self, request: Request) -> JSONResponse:
        refused = self._guard(request)
        if refused:
            return refused
        with self.lock:
            items = sorted(self.users.values(), key=lambda u: u["id"])
        body, _ = self._page(request, items, "/v1.0/users")
        return JSONResponse(body)

    async def delta(self, request: Request) -> JSONResponse:
        refused = self._guard(request)
        if refused:
            return refused
        params = request.query_params
        with self.lock:
            if "$deltatoken" in params:
                if self.expired_delta_tokens:
                    return _error(410, "syncStateNotFound", "The sync state is no longer valid.")
                since = int(params["$deltatoken"])
                items = [
                    self.users[uid] for uid, v in sorted(self.changed.items()) if v > since
                ] + [
                    {"id": uid, "@removed": {"reason": "deleted"}}
                    for uid, v in sorted(self.removed.items())
                    if v > since
                ]
                select = [f for f in params.get("$select", "").split(",") if f]
                return JSONResponse(
                    {
                        "value": [i if "@removed" in i else _project(i, select) for i in items],
                        "@odata.deltaLink": self._delta_link(select),
                    }
                )
            items = sorted(self.users.values(), key=lambda u: u["id"])
            body, more = self._page(request, items, "/v1.0/users/delta")
            if not more:
                select = [f for f in params.get("$select", "").split(",") if f]
                body["@odata.deltaLink"] = self._delta_link(select)
        return JSONResponse(body)

    def _delta_link(self, select: list[str]) -> str:
        query = {"$deltatoken": str(self.version)} | (
            {"$select": ",".join(select)} if select else {}
        )
        return f"{self.base_url}/v1.0/users/delta?{urlencode(query)}"

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
        body, _ = self._page(request, items, request.url.path)
        return JSONResponse(body)


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
