"""``CurrentDevice``: device-token authentication for every device endpoint (activation aside).

Use it like ``CurrentAdmin``: ``def handler(device: CurrentDevice, session: DbSession)``. It
shares the request's database session, and refuses with 401 ``device_unauthorized`` and a
``reason`` (``user_preserved``, ``device_disabled`` …) that agents treat as final. A token
that matches no device is audited (``device.token_refused``) and counted against the source's
refusal limit, past which the answer is 429 ``rate_limited``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from fleetkeep.deployment.abuse import refuse_device_token
from fleetkeep.deployment.devices import authenticate_device
from fleetkeep.deployment.errors import DeviceUnauthorized
from fleetkeep.deployment.models import Device
from fleetkeep.web.deps import AppSettings, DbSession


def current_device(request: Request, session: DbSession, settings: AppSettings) -> Device:
    header = request.headers.get("authorization", "")
    secret = header[7:].strip() if header[:7].lower() == "bearer " else ""
    try:
        if not secret:
            raise DeviceUnauthorized("token_missing", "send 'Authorization: Bearer <device token>'")
        device = authenticate_device(session, secret)
    except DeviceUnauthorized as exc:
        if exc.reason in ("token_missing", "token_invalid"):
            # A token that matches no device is forged, guessed or superseded: audited and
            # counted against the source like a refused activation.
            source = request.client.host if request.client else "unknown"
            limited = refuse_device_token(session, settings, source, exc.reason)
            session.commit()
            if limited is not None:
                raise limited from None
        raise
    request.state.device_id = device.id
    return device


CurrentDevice = Annotated[Device, Depends(current_device)]
