"""``/api/v1`` deployment tokens, devices, device mappings (IMD v4) and auth keys."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status

from fleetkeep.deployment import activation, authkeys, devices, mappings, replacement, tokens
from fleetkeep.deployment.models import DeploymentToken, Device, DeviceState, Platform
from fleetkeep.deployment.schemas import (
    AuthKeyCreate,
    AuthKeyCreated,
    DeviceOut,
    ExplanationOut,
    MappingImportOut,
    MappingOut,
    ReplaceIn,
    RestorePlanOut,
    StepOut,
    TokenCreate,
    TokenCreated,
    TokenOut,
)
from fleetkeep.errors import FleetkeepError
from fleetkeep.web.deps import CurrentActor, DbSession
from fleetkeep.web.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, next_cursor

router = APIRouter(tags=["deployment"])


def token_out(
    token: DeploymentToken, usage: dict[int, tuple[int, datetime | None]] | None = None
) -> TokenOut:
    use_count, last_used_at = (usage or {}).get(token.id, (0, None))
    return TokenOut(
        id=token.id,
        label=token.label,
        prefix=token.prefix,
        status=tokens.status(token),
        profile_ids=token.profile_ids,
        created_by=token.created_by,
        created_at=token.created_at,
        expires_at=token.expires_at,
        revoked_at=token.revoked_at,
        use_count=use_count,
        last_used_at=last_used_at,
    )


def device_out(device: Device) -> DeviceOut:
    fields = {
        name: getattr(device, name) for name in DeviceOut.model_fields if name != "user_email"
    }
    return DeviceOut(user_email=device.user.email, **fields)


@router.get("/deployment-tokens")
def list_tokens(session: DbSession) -> list[TokenOut]:
    usage = tokens.usage(session)
    return [token_out(t, usage) for t in tokens.list_tokens(session)]


@router.post("/deployment-tokens", status_code=status.HTTP_201_CREATED)
def create_token(body: TokenCreate, session: DbSession, actor: CurrentActor) -> TokenCreated:
    token, plain = tokens.create_token(
        session, actor, body.label, expires_at=body.expires_at, profile_ids=body.profile_ids
    )
    return TokenCreated(token=plain, **token_out(token).model_dump())


@router.get("/deployment-tokens/{token_id}")
def get_token(token_id: int, session: DbSession) -> TokenOut:
    return token_out(tokens.get_token(session, token_id), tokens.usage(session))


@router.delete("/deployment-tokens/{token_id}")
def revoke_token(token_id: int, session: DbSession, actor: CurrentActor) -> TokenOut:
    return token_out(tokens.revoke_token(session, actor, token_id))


@router.post("/deployment-tokens/{token_id}/expire")
def expire_token(token_id: int, session: DbSession, actor: CurrentActor) -> TokenOut:
    return token_out(tokens.expire_token(session, actor, token_id))


@router.get("/devices")
def list_devices(
    session: DbSession,
    state: DeviceState | None = None,
    platform: Platform | None = None,
    user_id: int | None = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[DeviceOut]:
    found = devices.list_devices(
        session,
        after_id=decode_cursor(cursor),
        limit=limit,
        state=state,
        platform=platform,
        user_id=user_id,
        q=q,
    )
    return Page(
        items=[device_out(d) for d in found],
        next_cursor=next_cursor([d.id for d in found], limit),
    )


@router.get("/devices/explain")
def explain(
    session: DbSession,
    hostname: Annotated[str, Query(min_length=1, max_length=255)],
    platform: Platform = Platform.WINDOWS,
    email: Annotated[str | None, Query(max_length=320)] = None,
    upn: Annotated[str | None, Query(max_length=320)] = None,
    username: Annotated[str | None, Query(max_length=256)] = None,
    domain: Annotated[str | None, Query(max_length=256)] = None,
    serial_number: Annotated[str, Query(max_length=128)] = "",
    hardware_uuid: Annotated[str, Query(max_length=64)] = "",
    token: Annotated[str | None, Query(max_length=200)] = None,
) -> ExplanationOut:
    """Replays the activation decision without changing anything."""
    req = activation.ActivationRequest(
        hostname=hostname,
        platform=platform,
        email=email,
        upn=upn,
        username=username,
        domain=domain,
        serial_number=serial_number,
        hardware_uuid=hardware_uuid,
        token=token,
        source="explain",
    )
    result = activation.explain(session, req)
    return ExplanationOut(
        outcome=result.outcome,
        code=result.code,
        reason=result.reason,
        mode=result.mode,
        user_id=result.user_id,
        user_email=result.user_email,
        device_id=result.device_id,
        replaces_device_id=result.replaces_device_id,
        steps=[StepOut(rule=s.rule, outcome=s.outcome, detail=s.detail) for s in result.steps],
    )


@router.get("/devices/{device_id}")
def get_device(device_id: int, session: DbSession) -> DeviceOut:
    return device_out(devices.get_device(session, device_id))


@router.post("/devices/{device_id}/disable")
def disable_device(device_id: int, session: DbSession, actor: CurrentActor) -> DeviceOut:
    return device_out(devices.disable_device(session, actor, device_id))


@router.post("/devices/{device_id}/enable")
def enable_device(device_id: int, session: DbSession, actor: CurrentActor) -> DeviceOut:
    return device_out(devices.enable_device(session, actor, device_id))


@router.post("/devices/{device_id}/decommission")
def decommission_device(device_id: int, session: DbSession, actor: CurrentActor) -> DeviceOut:
    return device_out(devices.decommission_device(session, actor, device_id))


@router.post("/devices/{device_id}/replace")
def replace_device(
    device_id: int, session: DbSession, actor: CurrentActor, body: ReplaceIn | None = None
) -> DeviceOut:
    """Mark for replacement: the user's next new device takes over and restores its data."""
    scope = (body or ReplaceIn()).restore
    return device_out(devices.mark_for_replacement(session, actor, device_id, scope))


@router.post("/devices/{device_id}/revoke-token")
def revoke_device_token(device_id: int, session: DbSession, actor: CurrentActor) -> DeviceOut:
    return device_out(devices.revoke_device_token(session, actor, device_id))


@router.get("/devices/{device_id}/restore-plan")
def device_restore_plan(device_id: int, session: DbSession) -> RestorePlanOut:
    return RestorePlanOut.model_validate(replacement.restore_plan_of(session, device_id))


@router.get("/device-mappings")
def list_mappings(
    session: DbSession,
    pending: bool = False,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[MappingOut]:
    rows = mappings.list_mappings(
        session, pending_only=pending, after_id=decode_cursor(cursor), limit=limit
    )
    return Page(
        items=[MappingOut.model_validate(r) for r in rows],
        next_cursor=next_cursor([r.id for r in rows], limit),
    )


async def _raw_body(request: Request) -> bytes:
    return await request.body()


@router.post("/device-mappings", status_code=status.HTTP_201_CREATED)
def import_mappings(
    data: Annotated[bytes, Depends(_raw_body)],
    session: DbSession,
    actor: CurrentActor,
    filename: Annotated[str, Query(max_length=255)] = "upload.csv",
) -> MappingImportOut:
    """The IMD v4 CSV as the request body (``text/csv``); all rows are stored, or none."""
    try:
        return MappingImportOut(imported=mappings.import_mappings(session, actor, data, filename))
    except FleetkeepError:
        session.commit()  # keep the audit record of the rejected upload
        raise


@router.delete("/device-mappings/{mapping_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_mapping(mapping_id: int, session: DbSession, actor: CurrentActor) -> None:
    mappings.delete_mapping(session, actor, mapping_id)


@router.post("/auth-keys", status_code=status.HTTP_201_CREATED)
def create_auth_key(body: AuthKeyCreate, session: DbSession, actor: CurrentActor) -> AuthKeyCreated:
    key, plain = authkeys.create_auth_key(session, actor, body.user_id, body.expires_at)
    return AuthKeyCreated(id=key.id, user_id=key.user_id, key=plain, expires_at=key.expires_at)
