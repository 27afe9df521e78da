"""Why an activation or a device request was refused: a stable code plus a human reason."""

from __future__ import annotations

from typing import Any

from fleetkeep.errors import FleetkeepError, Unauthorized

# HTTP status of each refusal code; the codes are a public contract with agents and MDM apps.
REFUSAL_STATUS: dict[str, int] = {
    "token_missing": 401,
    "token_invalid": 401,
    "token_expired": 401,
    "token_revoked": 401,
    "auth_key_invalid": 401,
    "auth_key_used": 401,
    "auth_key_expired": 401,
    "password_rejected": 401,
    "identity_missing": 422,
    "user_not_found": 404,
    "user_ambiguous": 409,
    "user_preserved": 403,
    "user_deleted": 403,
    "email_mismatch": 403,
    "profile_not_allowed": 403,
    "device_disabled": 403,
    "device_claimed": 409,
    "device_limit_reached": 409,
    "directory_unreachable": 503,
}


class ActivationRefused(FleetkeepError):
    """The server will not activate this device; ``code`` is one of ``REFUSAL_STATUS``."""

    title = "Activation refused"

    def __init__(self, code: str, reason: str, **extra: Any) -> None:
        super().__init__(reason, code=code, **extra)
        self.status = REFUSAL_STATUS[code]


class DeviceUnauthorized(Unauthorized):
    """A device token no longer (or never) works; ``reason`` tells the agent why.

    Agents treat this code as final: they stop, wipe the stored token and (mobile) local state.
    """

    code = "device_unauthorized"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail, reason=reason)
        self.reason = reason
