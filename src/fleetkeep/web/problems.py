"""Every error leaves the server as RFC 7807 problem JSON, from this one place."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleetkeep.errors import FleetkeepError, RateLimited
from fleetkeep.observability import request_id_var

log = logging.getLogger("fleetkeep.web")

PROBLEM_TYPE_BASE = "https://fleetkeep.dev/problems/"


def problem(
    status: int,
    title: str,
    detail: str,
    code: str,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    rid = request_id_var.get()
    if rid:
        body["request_id"] = rid
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(FleetkeepError)
    async def _domain(request: Request, exc: FleetkeepError) -> JSONResponse:
        headers = None
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(exc.retry_after)}
        if exc.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return problem(
            exc.status, exc.title, exc.detail, exc.code, request.url.path, headers, **exc.extra
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_field_error(e) for e in exc.errors()]
        if any(e["type"] == "json_invalid" for e in errors):
            return problem(
                400, "Malformed JSON", errors[0]["message"], "malformed_json", request.url.path
            )
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem(
            422, "Invalid input", detail, "invalid_input", request.url.path, errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status_code, "http_error"
        )
        title = {404: "Not found", 405: "Method not allowed", 413: "Payload too large"}.get(
            exc.status_code, "HTTP error"
        )
        return problem(
            exc.status_code,
            title,
            str(exc.detail),
            code,
            request.url.path,
            dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return problem(
            500,
            "Internal error",
            "an unexpected error occurred; see the server log with this request id",
            "internal_error",
            request.url.path,
        )


def _field_error(error: dict[str, Any]) -> dict[str, str]:
    loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")]
    message = str(error.get("msg", "invalid"))
    if error.get("type") == "extra_forbidden":
        message = "unknown field"
    return {"field": ".".join(loc) or "body", "message": message, "type": str(error.get("type"))}
