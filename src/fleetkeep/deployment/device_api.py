"""``/device/v1``: what agents and mobile apps call. Activation carries its own credentials
(deployment token or auth key); everything else authenticates with the device token."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, status
from pydantic import ValidationError

from fleetkeep.deployment import activation, devices
from fleetkeep.deployment.deps import CurrentDevice
from fleetkeep.deployment.replacement import restore_plan_of
from fleetkeep.deployment.schemas import (
    ActivationIn,
    ActivationOut,
    HeartbeatIn,
    HeartbeatOut,
    RestorePlanOut,
)
from fleetkeep.errors import FleetkeepError, InvalidInput
from fleetkeep.web.deps import AppSettings, DbSession

router = APIRouter(prefix="/device/v1", tags=["device"])


@router.post("/activations", status_code=status.HTTP_201_CREATED)
def activate(
    payload: Annotated[Any, Body()],
    request: Request,
    session: DbSession,
    settings: AppSettings,
) -> ActivationOut:
    source = request.client.host if request.client else "unknown"
    try:
        body = ActivationIn.model_validate(payload)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
            for e in exc.errors()
        ]
        activation.record_invalid_request(session, source, errors)
        session.commit()
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise InvalidInput(detail, errors=errors) from None
    req = activation.ActivationRequest(source=source, **body.model_dump())
    try:
        result = activation.activate(session, settings, req)
    except FleetkeepError:
        session.commit()  # refusals are kept: they feed the audit, rate limits and alerts
        raise
    config = devices.config_for(result.device_id, result.user, settings.public_url)
    # Committed here, in the handler's thread: the session dependency then has nothing left
    # to do in another thread-pool round trip.
    session.commit()
    return ActivationOut(
        device_id=result.device_id,
        device_token=result.device_token,
        mode=result.mode,
        reactivated=result.reactivated,
        restore_plan=result.restore_plan_id is not None,
        config=config,
    )


@router.post("/heartbeat")
def heartbeat(
    device: CurrentDevice,
    session: DbSession,
    settings: AppSettings,
    body: HeartbeatIn | None = None,
) -> HeartbeatOut:
    devices.heartbeat(session, device, body.agent_version if body else None)
    return HeartbeatOut(
        device_id=device.id,
        state=device.state,
        config=devices.device_config(device, settings.public_url),
    )


@router.get("/restore-plan")
def restore_plan(device: CurrentDevice, session: DbSession) -> RestorePlanOut:
    return RestorePlanOut.model_validate(restore_plan_of(session, device.id))
