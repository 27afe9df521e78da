"""A Google OAuth token endpoint + Admin SDK Directory API double, after the documented formats.

- ``POST /token``: the JWT-bearer grant (``urn:ietf:params:oauth:grant-type:jwt-bearer``) a
  service account makes; the assertion's RS256 signature is checked against the service
  account's public key, and ``iss``/``aud``/``scope``/``exp`` and the delegated ``sub`` like
  Google does (``unauthorized_client`` when the admin has not granted delegation)
- ``GET /admin/directory/v1/users`` (``customer`` or ``domain``, ``maxResults``,
  ``pageToken`` → ``nextPageToken``)
- ``GET /admin/directory/v1/groups/{groupKey}/members`` (``includeDerivedMembership``
  flattens nested groups; ``groupKey`` is the group's email or id)
- Faults on demand: quota refusals (403 ``userRateLimitExceeded``, 429
  ``rateLimitExceeded``), 5xx ``backendError``, revoked tokens (401 ``authError``).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.doubles.graph import Fault

ADMIN = "admin@example.org"
CLIENT_EMAIL = "fleetkeep-sync@example-project.iam.gserviceaccount.com"
USER_SCOPE = "https://www.googleapis.com/auth/admin.directory.user.readonly"
# The Directory API's quota refusals ("Limits and quotas"): 403 with a reason, or 429.
FAULT_REASONS = {403: "userRateLimitExceeded", 429: "rateLimitExceeded", 503: "backendError"}


def service_account_key(token_uri: str) -> tuple[dict[str, Any], Any]:
    """A fresh service account JSON key (as the Cloud console downloads it) and its public key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "example-project",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": CLIENT_EMAIL,
        "client_id": "104857600000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }
    return info, private.public_key()


@dataclass
class GoogleDouble:
    base_url: str = ""
    public_key: Any = None
    delegated_admins: set[str] = field(default_factory=lambda: {ADMIN})
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)
    token_requests: int = 0
    faults: list[Fault] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    request_times: list[float] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add_user(self, email: str, **props: Any) -> str:
        uid = str(100000000000000000000 + next(self._ids))
        given, _, family = email.split("@")[0].partition(".")
        self.users[uid] = {
            "kind": "admin#directory#user",
            "id": uid,
            "etag": f'"{uid}"',
            "primaryEmail": email,
            "name": {
                "givenName": given.title(),
                "familyName": family.title(),
                "fullName": f"{given.title()} {family.title()}".strip(),
            },
            "isAdmin": False,
            "suspended": False,
            "archived": False,
            "orgUnitPath": "/",
            "emails": [{"address": email, "primary": True}],
            "customerId": "C0123abcd",
        } | props
        return uid

    def add_group(self, email: str, members: list[str]) -> str:
        gid = f"0{next(self._ids):013x}"
        self.groups[gid] = {"id": gid, "email": email, "members": list(members)}
        return gid

    def fail(
        self, path_part: str, status: int, times: int = 1, retry_after: str | None = None
    ) -> None:
        self.faults.append(Fault(path_part, status, times, retry_after))

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/token", self.token, methods=["POST"]),
                Route("/admin/directory/v1/users", self.list_users),
                Route("/admin/directory/v1/groups/{key}/members", self.members),
            ]
        )

    async def token(self, request: Request) -> JSONResponse:
        self.token_requests += 1
        form = await request.form()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        try:
            claims = jwt.decode(
                str(form.get("assertion")),
                self.public_key,
                algorithms=["RS256"],
                # google-auth (like Google) always uses the public token endpoint as audience
                audience="https://oauth2.googleapis.com/token",
                issuer=CLIENT_EMAIL,
            )
        except jwt.PyJWTError as exc:
            return JSONResponse(
                {"error": "invalid_grant", "error_description": f"Invalid JWT: {exc}"},
                status_code=400,
            )
        if claims.get("sub") not in self.delegated_admins or USER_SCOPE not in claims.get(
            "scope", ""
        ):
            return JSONResponse(
                {
                    "error": "unauthorized_client",
                    "error_description": "Client is unauthorized to retrieve access tokens using "
                    "this method, or client not authorized for any of the scopes requested.",
                },
                status_code=401,
            )
        token = f"ya29.double-{self.token_requests}-{int(time.time())}"
        self.tokens.add(token)
        return JSONResponse({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    def _guard(self, request: Request) -> JSONResponse | None:
        self.requests.append(f"{request.url.path}?{request.url.query}")
        self.request_times.append(time.monotonic())
        for fault in self.faults:
            if fault.path_part in request.url.path and fault.times > 0:
                fault.times -= 1
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
                return _error(
                    fault.status, FAULT_REASONS.get(fault.status, "backendError"), headers
                )
        header = request.headers.get("authorization", "")
        if header[7:] not in self.tokens:
            return _error(401, "authError", message="Invalid Credentials")
        return None

    def _paged(
        self, request: Request, items: list[dict[str, Any]], key: str, kind: str
    ) -> JSONResponse:
        size = min(int(request.query_params.get("maxResults", "100")), 500)
        start = int(request.query_params.get("pageToken", "0") or 0)
        body: dict[str, Any] = {"kind": kind, "etag": '"double"', key: items[start : start + size]}
        if start + size < len(items):
            body["nextPageToken"] = str(start + size)
        return JSONResponse(body)

    async def list_users(self, request: Request) -> JSONResponse:
        refused = self._guard(request)
        if refused:
            return refused
        params = request.query_params
        if not params.get("customer") and not params.get("domain"):
            return _error(400, "badRequest", message="Bad Request")
        users = sorted(self.users.values(), key=lambda u: u["primaryEmail"])
        if params.get("domain"):
            users = [u for u in users if u["primaryEmail"].endswith("@" + params["domain"])]
        return self._paged(request, users, "users", "admin#directory#users")

    async def members(self, request: Request) -> JSONResponse:
        refused = self._guard(request)
        if refused:
            return refused
        key = request.path_params["key"]
        group = next((g for g in self.groups.values() if key in (g["id"], g["email"])), None)
        if group is None:
            return _error(404, "notFound", message="Resource Not Found: groupKey")
        derived = request.query_params.get("includeDerivedMembership") == "true"
        found: list[dict[str, Any]] = []
        pending, seen = [group["id"]], set()
        while pending:
            current = self.groups[pending.pop(0)]
            if current["id"] in seen:
                continue
            seen.add(current["id"])
            for member in current["members"]:
                if member in self.groups:
                    if derived:
                        pending.append(member)
                    else:
                        found.append(self._member(member, "GROUP", self.groups[member]["email"]))
                elif member in self.users:
                    found.append(self._member(member, "USER", self.users[member]["primaryEmail"]))
        unique = list({m["id"]: m for m in found}.values())
        return self._paged(request, unique, "members", "admin#directory#members")

    @staticmethod
    def _member(member_id: str, kind: str, email: str) -> dict[str, Any]:
        return {
            "kind": "admin#directory#member",
            "id": member_id,
            "email": email,
            "role": "MEMBER",
            "type": kind,
            "status": "ACTIVE",
        }


def _error(
    status: int, reason: str, headers: dict[str, str] | None = None, message: str = ""
) -> JSONResponse:
    text = message or reason
    return JSONResponse(
        {
            "error": {
                "code": status,
                "message": text,
                "errors": [{"message": text, "domain": "global", "reason": reason}],
            }
        },
        status_code=status,
        headers=headers,
    )
