"""The error hierarchy services raise; ``web/problems.py`` turns each into RFC 7807 problem JSON.

Every capability subclasses these, keeping a stable machine ``code`` and a human ``detail``.
"""

from __future__ import annotations

from typing import Any


class FleetkeepError(Exception):
    status = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(self, detail: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.extra = extra


class InvalidInput(FleetkeepError):
    status = 422
    code = "invalid_input"
    title = "Invalid input"


class NotFound(FleetkeepError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(FleetkeepError):
    status = 409
    code = "conflict"
    title = "Conflict"


class Unauthorized(FleetkeepError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"


class Forbidden(FleetkeepError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class RateLimited(FleetkeepError):
    status = 429
    code = "rate_limited"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(detail, code=code, retry_after=retry_after)
        self.retry_after = retry_after


class Unavailable(FleetkeepError):
    status = 503
    code = "unavailable"
    title = "Service unavailable"
