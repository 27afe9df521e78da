"""The ``/scim/v2`` web adapter: bearer-token auth, parse, call the service, shape SCIM JSON.

Every failure leaves as a SCIM Error (``application/scim+json``), never as problem+json, because
identity providers read ``status``/``scimType`` to decide whether to retry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from scim2_models import Context
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from fleetkeep.audit.service import Actor
from fleetkeep.db import transaction
from fleetkeep.directories.scim import protocol, service
from fleetkeep.directories.scim.protocol import (
    MEDIA_TYPE,
    SEARCH_SCHEMA,
    GroupResource,
    ScimError,
    UserResource,
)
from fleetkeep.errors import FleetkeepError
from fleetkeep.observability import request_id_var
from fleetkeep.web.deps import bearer_secret

log = logging.getLogger("fleetkeep.scim")

router = APIRouter(prefix="/scim/v2", tags=["scim"])

_AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}

Work = Callable[[Session, Actor, str], tuple[int, Any, dict[str, str]]]


def _respond(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    content = b"" if body is None else json.dumps(body, default=str).encode()
    return Response(content, status_code=status, media_type=MEDIA_TYPE, headers=headers)


async def _handle(request: Request, work: Work, *, inline: bool = False) -> Response:
    """Authenticate the token, run ``work`` in one transaction, turn errors into SCIM errors.

    ``work`` runs in a worker thread, or on the event loop when ``inline``: for work on one
    User (a few statements on its own rows, a few milliseconds). There the hand-off to a thread
    and back cost as much CPU as the work itself (a simple PATCH under 32 clients: 4.1 ms
    through the thread pool, 2.0 ms inline), and the GIL passing between a dozen threads
    delayed every request of the process. The loop then waits for the database too, time that
    PostgreSQL and the other worker processes use. Searches and Groups (a group can have
    thousands of members) stay in threads, so they never hold up the loop for long.
    """

    def run() -> tuple[int, Any, dict[str, str]]:
        factory = request.app.state.sessionmaker
        base_url = request.app.state.settings.public_url.rstrip("/") + "/scim/v2"
        with transaction(factory) as session:
            if inline and request.method == "GET":
                # The token's read and one read of one User: each is consistent alone, so no
                # transaction is begun and committed (two of the request's four round trips).
                session.connection(execution_options=_AUTOCOMMIT)
            service.authenticate(session, bearer_secret(request))
            actor = Actor(
                "scim",
                request_id=request_id_var.get(),
                source_ip=request.client.host if request.client else None,
            )
            return work(session, actor, base_url)

    try:
        status, body, headers = run() if inline else await run_in_threadpool(run)
    except ScimError as exc:
        return _respond(exc.status, exc.body())
    except FleetkeepError as exc:
        error = ScimError(exc.status, exc.detail, None)
        challenge = {"WWW-Authenticate": 'Bearer realm="scim"'} if exc.status == 401 else None
        return _respond(exc.status, error.body(), challenge)
    except Exception:
        log.exception("SCIM request failed", extra={"path": request.url.path})
        return _respond(500, ScimError(500, "internal error; see the server log").body())
    return _respond(status, body, headers)


def _params(request: Request) -> dict[str, Any]:
    return dict(request.query_params)


def _if_match(request: Request) -> str | None:
    return request.headers.get("if-match")


def _one(
    resource: Any, version: int, context: Context, status: int = 200
) -> tuple[int, Any, dict[str, str]]:
    headers = {"ETag": protocol.etag(version)}
    if status == 201:
        headers["Location"] = str(resource.meta.location)
    return status, protocol.dump(resource, context, None), headers


def _user(stored: service.Stored, status: int = 200) -> tuple[int, Any, dict[str, str]]:
    headers = {"ETag": protocol.etag(stored.version)}
    if status == 201:
        headers["Location"] = stored.body["meta"]["location"]
    return status, stored.body, headers


def _projected(request: Request, model: Any) -> Any:
    """``attributes``/``excludedAttributes`` on single-resource requests."""
    params = {
        k: v for k, v in _params(request).items() if k in {"attributes", "excludedAttributes"}
    }
    return protocol.parse_search(model, params) if params else None


def _search_body(body: bytes) -> dict[str, Any]:
    data = protocol.parse_json(body)
    if data.pop("schemas", None) != [SEARCH_SCHEMA]:
        raise ScimError(
            400, f"a search request has 'schemas': [{SEARCH_SCHEMA!r}]", "invalidSyntax"
        )
    return data


def _search_users(session: Session, params: dict[str, Any], base: str) -> dict[str, Any]:
    search = protocol.parse_search(UserResource, params)
    found = service.search_users(session, search, base)
    return protocol.list_response([(r, search) for r in found], search)


def _search_groups(session: Session, params: dict[str, Any], base: str) -> dict[str, Any]:
    search = protocol.parse_search(GroupResource, params)
    found = service.search_groups(session, search, base)
    return protocol.list_response([(r, search) for r in found], search)


# Routes are tried in the order they are declared: Users first, by how often identity providers
# call them (a filtered GET before every push, then PATCH, POST), discovery last.

# Users ----------------------------------------------------------------------------------------


@router.get("/Users")
async def list_users(request: Request) -> Response:
    params = _params(request)
    user_name = protocol.user_name_filter(params)

    def work(s: Session, a: Actor, base: str) -> tuple[int, Any, dict[str, str]]:
        if user_name is not None:
            found = service.users_named(s, user_name, base)
            return 200, protocol.list_page(len(found), 1, found), {}
        return 200, _search_users(s, params, base), {}

    return await _handle(request, work, inline=user_name is not None)


@router.patch("/Users/{user_id}")
async def patch_user(request: Request, user_id: str) -> Response:
    body = await request.body()

    def work(s: Session, a: Actor, base: str) -> tuple[int, Any, dict[str, str]]:
        data = protocol.parse_json(body)
        simple = protocol.simple_patch(data)
        if simple is not None:
            done = service.patch_user_simply(s, a, user_id, simple, base, _if_match(request))
            if done is not None:
                return 200, done[0], {"ETag": protocol.etag(done[1])}
        patch = protocol.parse_patch(UserResource, data)
        return _user(service.patch_user(s, a, user_id, patch, base, _if_match(request)))

    return await _handle(request, work, inline=True)


@router.post("/Users/.search")
async def search_users(request: Request) -> Response:
    body = await request.body()

    def work(s: Session, a: Actor, base: str) -> tuple[int, Any, dict[str, str]]:
        return 200, _search_users(s, _search_body(body), base), {}

    return await _handle(request, work)


@router.post("/Users")
async def create_user(request: Request) -> Response:
    body = await request.body()

    def work(s: Session, a: Actor, base: str) -> tuple[int, Any, dict[str, str]]:
        resource = protocol.parse_resource(
            UserResource, protocol.parse_json(body), Context.RESOURCE_CREATION_REQUEST
        )
        return _user(service.create_user(s, a, resource, base), 201)

    return await _handle(request, work, inline=True)


@router.get("/Users/{user_id}")
async def get_user(request: Request, user_id: str) -> Response:
    def work(s: Session, a: Actor, base: str) -> tuple[int, Any, dict[str, str]]:
        projection = _projected(request, UserResource)
        stored = service.get_user(s, user_id, base)
        if projection is None:
            return _user(stored)
        return (
            200,
            protocol.dump(stored.resource, Context.RESOURCE_QUERY_RESPONSE, projection),
            {"ETag": protocol.etag(stored.version)},
        )

    return await _handle(request, work, inline=True)


@router.put("/Users/{user_id}")
async def replace_user(request: Request, user_id: str) -> Response:
    body = await request.body()

    def work(s: Session, a: Actor, base: str) -> tuple[int, Any, dict[str, str]]:
        resource = protocol.parse_resource(
            UserResource, protocol.parse_json(body), Context.RESOURCE_REPLACEMENT_REQUEST
        )
        return _user(service.replace_user(s, a, user_id, resource, base, _if_match(request)))

    return await _handle(request, work, inline=True)


@router.delete("/Users/{user_id}")
async def delete_user(request: Request, user_id: str) -> Response:
    def work(s: Session, a: Actor, base: str) -> tuple[int, Any, dict[str, str]]:
        service.delete_user(s, a, user_id, _if_match(request))
        return 204, None, {}

    return await _handle(request, work, inline=True)


# Groups ---------------------------------------------------------------------------------------


@router.get("/Groups")
async def list_groups(request: Request) -> Response:
    def work(s: Session, a: Actor, base: str) -> tuple[int, Any, dict[str, str]]:
        return 200, _search_groups(s, _params(request), base), {}

    return await _handle(request, work)


@router.post("/Groups/.search")
async def search_groups(request: Request) -> Response:
    body = await request.body()

    def work(s: Session, a: Actor, base: str) -> tuple[int, Any, dict[str, str]]:
        return 200, _search_groups(s, _search_body(body), base), {}

    return await _handle(request, work)


@router.post("/Groups")
async def create_group(request: Request) -> Response:
    body = await request.body()

    def work(s: Session, a: Actor, base: str) -> tuple[int, Any, dict[str, str]]:
        resource = protocol.parse_resource(
            GroupResource, protocol.parse_json(body), Context.RESOURCE_CREATION_REQUEST
        )
        stored = service.create_group(s, a, resource, base)
        return _one(stored.resource, stored.version, Context.RESOURCE_CREATION_RESPONSE, 201)

    return await _handle(request, work)


@router.get("/Groups/{group_id}")
async def get_group(request: Request, group_id: str) -> Response:
    def work(s: Session, a: Actor, base: str) -> tuple[int, Any, dict[str, str]]:
        projection = _projected(request, GroupResource)
        stored = service.get_group(s, group_id, base)
        return (
            200,
            protocol.dump(stored.resource, Context.RESOURCE_QUERY_RESPONSE, projection),
            {"ETag": protocol.etag(stored.version)},
        )

    return await _handle(request, work)


@router.put("/Groups/{group_id}")
async def replace_group(request: Request, group_id: str) -> Response:
    body = await request.body()

    def work(s: Session, a: Actor, base: str) -> tuple[int, Any, dict[str, str]]:
        resource = protocol.parse_resource(
            GroupResource, protocol.parse_json(body), Context.RESOURCE_REPLACEMENT_REQUEST
        )
        stored = service.replace_group(s, a, group_id, resource, base, _if_match(request))
        return _one(stored.resource, stored.version, Context.RESOURCE_REPLACEMENT_RESPONSE)

    return await _handle(request, work)


@router.patch("/Groups/{group_id}")
async def patch_group(request: Request, group_id: str) -> Response:
    body = await request.body()

    def work(s: Session, a: Actor, base: str) -> tuple[int, Any, dict[str, str]]:
        patch = protocol.parse_patch(GroupResource, protocol.parse_json(body))
        stored = service.patch_group(s, a, group_id, patch, base, _if_match(request))
        return _one(stored.resource, stored.version, Context.RESOURCE_PATCH_RESPONSE)

    return await _handle(request, work)


@router.delete("/Groups/{group_id}")
async def delete_group(request: Request, group_id: str) -> Response:
    def work(s: Session, a: Actor, base: str) -> tuple[int, Any, dict[str, str]]:
        service.delete_group(s, a, group_id, base, _if_match(request))
        return 204, None, {}

    return await _handle(request, work)


# Discovery ------------------------------------------------------------------------------------


@router.get("/ServiceProviderConfig")
async def service_provider_config(request: Request) -> Response:
    return await _handle(
        request, lambda s, a, base: (200, protocol.service_provider_config(base), {})
    )


@router.get("/ResourceTypes")
async def resource_types(request: Request) -> Response:
    return await _handle(
        request,
        lambda s, a, base: (200, protocol.discovery_list(protocol.resource_types(base)), {}),
    )


@router.get("/ResourceTypes/{name}")
async def resource_type(request: Request, name: str) -> Response:
    def work(s: Session, a: Actor, base: str) -> tuple[int, Any, dict[str, str]]:
        for item in protocol.resource_types(base):
            if item["id"] == name:
                return 200, item, {}
        raise ScimError(404, f"resource type {name} not found")

    return await _handle(request, work)


@router.get("/Schemas")
async def schemas(request: Request) -> Response:
    return await _handle(
        request, lambda s, a, base: (200, protocol.discovery_list(protocol.schemas(base)), {})
    )


@router.get("/Schemas/{urn}")
async def schema(request: Request, urn: str) -> Response:
    def work(s: Session, a: Actor, base: str) -> tuple[int, Any, dict[str, str]]:
        for item in protocol.schemas(base):
            if item["id"] == urn:
                return 200, item, {}
        raise ScimError(404, f"schema {urn} not found")

    return await _handle(request, work)


@router.post("/.search")
async def search_all(request: Request) -> Response:
    """A search across Users and Groups; a filter naming attributes of one type finds only it."""
    body = await request.body()

    def work(s: Session, a: Actor, base: str) -> tuple[int, Any, dict[str, str]]:
        data = _search_body(body)
        found: list[tuple[Any, Any]] = []
        errors: list[ScimError] = []
        first: Any = None
        try:
            users = protocol.parse_search(UserResource, data)
            found.extend((r, users) for r in service.search_users(s, users, base))
            first = users
        except ScimError as exc:
            errors.append(exc)
        try:
            groups = protocol.parse_search(GroupResource, data)
            found.extend((r, groups) for r in service.search_groups(s, groups, base))
            first = first or groups
        except ScimError as exc:
            errors.append(exc)
        if first is None:
            raise errors[0]
        return 200, protocol.list_response(found, first), {}

    return await _handle(request, work)


ENDPOINTS = {"ServiceProviderConfig", "ResourceTypes", "Schemas", "Users", "Groups"}


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def unknown(request: Request, rest: str) -> Response:
    """Unknown paths get 404 and known ones a method they lack 405, both as SCIM errors."""

    def work(s: Session, a: Actor, base: str) -> tuple[int, Any, dict[str, str]]:
        if rest.split("/", 1)[0] in ENDPOINTS:
            raise ScimError(405, f"{request.method} is not allowed on /{rest}")
        raise ScimError(404, f"no SCIM endpoint /{rest}")

    return await _handle(request, work)
