"""``/device/v1``: what agents and mobile apps call. Activation carries its own credentials
(deployment token or auth key); everything else authenticates with the device token."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Body, Request, Response, status
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

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
from fleetkeep.settings import Settings
from fleetkeep.web.deps import AppSettings, DbSession

router = APIRouter(prefix="/device/v1", tags=["device"])


# Activations run in threads (the service is synchronous), at most this many at a time per
# process: a storm of them otherwise fills the whole thread pool, and threads contending for
# the GIL and PostgreSQL backends contending for the cores cost CPU without adding throughput.
ACTIVATION_THREADS = 8
_limiter = anyio.CapacityLimiter(ACTIVATION_THREADS)


@router.post("/activations", status_code=status.HTTP_201_CREATED, response_model=ActivationOut)
async def activate(payload: Annotated[Any, Body()], request: Request) -> Response:
    """The busiest route in an activation storm, so it skips what costs CPU on every call: the
    session and settings dependencies (an async generator and an exit stack per request; the
    session is opened in the activation's thread) and the response model's validation (the
    answer is built from ``ActivationOut`` and sent as it is)."""
    source = request.client.host if request.client else "unknown"
    settings: Settings = request.app.state.settings
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    return await anyio.to_thread.run_sync(
        _activate, factory, settings, payload, source, limiter=_limiter
    )


def _activate(
    factory: sessionmaker[Session], settings: Settings, payload: Any, source: str
) -> Response:
    with factory() as session:
        return _activate_in(session, settings, payload, source)


def _activate_in(session: Session, settings: Settings, payload: Any, source: str) -> Response:
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
    answer = ActivationOut(
        device_id=result.device_id,
        device_token=result.device_token,
        mode=result.mode,
        reactivated=result.reactivated,
        restore_plan=result.restore_plan_id is not None,
        config=devices.config_for(result.device_id, result.user, settings.public_url),
    )
    session.commit()
    return Response(
        answer.model_dump_json(), status.HTTP_201_CREATED, media_type="application/json"
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
