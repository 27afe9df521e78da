"""``CurrentDevice``: device-token authentication for every device endpoint (activation aside).

Use it like ``CurrentAdmin``: ``def handler(device: CurrentDevice, session: DbSession)``. It
shares the request's database session, and refuses with 401 ``device_unauthorized`` and a
``reason`` (``user_preserved``, ``device_disabled`` …) that agents treat as final.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from fleetkeep.deployment.devices import authenticate_device
from fleetkeep.deployment.errors import DeviceUnauthorized
from fleetkeep.deployment.models import Device
from fleetkeep.web.deps import DbSession


def current_device(request: Request, session: DbSession) -> Device:
    header = request.headers.get("authorization", "")
    secret = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not secret:
        raise DeviceUnauthorized("token_missing", "send 'Authorization: Bearer <device token>'")
    device = authenticate_device(session, secret)
    request.state.device_id = device.id
    return device


CurrentDevice = Annotated[Device, Depends(current_device)]
