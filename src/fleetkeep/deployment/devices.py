"""Devices after activation: listing, admin state changes, heartbeats and device-token auth.

Device lifecycle::

    active ◀──heartbeat── inactive (no contact for N days, daily job)
      │  ▲
      │  └─enable── disabled ◀──disable── (active | inactive)
      ├──mark for replacement──▶ pending-replacement ──new device activates──▶ decommissioned
      └──decommission────────────────────────────────────────────────────────▶ decommissioned

A decommissioned device gives up its hardware identity (serial/UUID keys); its token is refused.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from fleetkeep.audit.service import Actor, record
from fleetkeep.db import utcnow
from fleetkeep.deployment.errors import DeviceUnauthorized
from fleetkeep.deployment.models import Device, DeviceState, Platform, RestoreScope
from fleetkeep.errors import Conflict, NotFound
from fleetkeep.identity.models import User, UserState
from fleetkeep.tokens import hash_token

DEVICE_TOKEN_PREFIX = "fkd"  # noqa: S105 - a kind prefix, not a secret

# States in which a device counts against the profile's device limit.
COUNTED_STATES = (DeviceState.ACTIVE, DeviceState.DISABLED, DeviceState.INACTIVE)


def get_device(session: Session, device_id: int) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFound(f"device {device_id} does not exist")
    return device


def find_device(session: Session, ref: str) -> Device:
    """By id, or by exact name/hostname (case-insensitive) when that is unambiguous."""
    if ref.isdigit():
        return get_device(session, int(ref))
    matches = list(
        session.scalars(
            select(Device)
            .where(func.lower(Device.hostname) == ref.lower())
            .where(Device.state != DeviceState.DECOMMISSIONED)
        )
    )
    if not matches:
        raise NotFound(f"no live device with hostname {ref!r}")
    if len(matches) > 1:
        ids = ", ".join(str(d.id) for d in matches)
        raise Conflict(
            f"hostname {ref!r} names several devices ({ids}); use an id", code="ambiguous"
        )
    return matches[0]


def list_devices(
    session: Session,
    *,
    after_id: int | None = None,
    limit: int = 100,
    state: DeviceState | None = None,
    platform: Platform | None = None,
    user_id: int | None = None,
    q: str | None = None,
) -> list[Device]:
    query = select(Device).order_by(Device.id).limit(limit)
    if after_id is not None:
        query = query.where(Device.id > after_id)
    if state is not None:
        query = query.where(Device.state == state)
    if platform is not None:
        query = query.where(Device.platform == platform)
    if user_id is not None:
        query = query.where(Device.user_id == user_id)
    if q:
        pattern = f"%{q.strip().lower()}%"
        query = query.join(User, User.id == Device.user_id).where(
            or_(
                func.lower(Device.hostname).like(pattern),
                func.lower(Device.name).like(pattern),
                func.lower(Device.serial_number).like(pattern),
                User.email_normalized.like(pattern),
            )
        )
    return list(session.scalars(query))


def count_by_state(session: Session) -> dict[str, int]:
    counts = {state.value: 0 for state in DeviceState}
    for state, n in session.execute(select(Device.state, func.count()).group_by(Device.state)):
        counts[DeviceState(state).value] = n
    return counts


def disable_device(session: Session, actor: Actor, device_id: int) -> Device:
    device = get_device(session, device_id)
    if device.state not in (DeviceState.ACTIVE, DeviceState.INACTIVE):
        raise Conflict(f"a {device.state} device cannot be disabled", code="illegal_transition")
    return _set_state(session, actor, device, DeviceState.DISABLED, "device.disable")


def enable_device(session: Session, actor: Actor, device_id: int) -> Device:
    device = get_device(session, device_id)
    if device.state is not DeviceState.DISABLED:
        raise Conflict(f"a {device.state} device cannot be enabled", code="illegal_transition")
    return _set_state(session, actor, device, DeviceState.ACTIVE, "device.enable")


def decommission_device(session: Session, actor: Actor, device_id: int) -> Device:
    device = get_device(session, device_id)
    if device.state is DeviceState.DECOMMISSIONED:
        raise Conflict(f"device {device_id} is already decommissioned", code="illegal_transition")
    return retire(session, actor, device, "device.decommission")


def retire(session: Session, actor: Actor, device: Device, action: str) -> Device:
    """Decommission: the hardware identity is released. The token hash stays so the agent is
    told ``device_decommissioned`` (and stops) rather than just ``token_invalid``."""
    device.serial_key = None
    device.uuid_key = None
    return _set_state(session, actor, device, DeviceState.DECOMMISSIONED, action)


def mark_for_replacement(
    session: Session, actor: Actor, device_id: int, scope: RestoreScope = RestoreScope.ALL
) -> Device:
    """The user's next new device takes this one's place and restores its data (``scope``)."""
    device = get_device(session, device_id)
    if device.state in (DeviceState.DECOMMISSIONED, DeviceState.PENDING_REPLACEMENT):
        raise Conflict(
            f"a {device.state} device cannot be marked for replacement", code="illegal_transition"
        )
    device.replacement_scope = scope
    return _set_state(
        session, actor, device, DeviceState.PENDING_REPLACEMENT, "device.mark_replace"
    )


def revoke_device_token(session: Session, actor: Actor, device_id: int) -> Device:
    """The device must activate again to get a new token."""
    device = get_device(session, device_id)
    device.token_hash = None
    record(session, actor, "device.revoke_token", "device", device.id)
    return device


def authenticate_device(session: Session, secret: str) -> Device:
    """The device behind a device token, checking the device and its user *now*.

    The user's state is read on every request, so preserving or deleting a user (by an admin,
    a directory sync or SCIM) cuts off all their devices at once with no extra bookkeeping.
    """
    device = session.scalar(select(Device).where(Device.token_hash == hash_token(secret)))
    if device is None:
        raise DeviceUnauthorized("token_invalid", "this device token is not valid")
    if device.user.state is UserState.PRESERVED:
        raise DeviceUnauthorized("user_preserved", f"user {device.user.email} is preserved")
    if device.user.state is UserState.DELETED:
        raise DeviceUnauthorized("user_deleted", f"user {device.user.email} was deleted")
    if device.state is DeviceState.DISABLED:
        raise DeviceUnauthorized("device_disabled", f"device {device.id} was disabled")
    if device.state is DeviceState.DECOMMISSIONED:
        raise DeviceUnauthorized("device_decommissioned", f"device {device.id} is decommissioned")
    return device


def heartbeat(session: Session, device: Device, agent_version: str | None) -> Device:
    device.last_seen_at = utcnow()
    if agent_version:
        device.agent_version = agent_version
    if device.state is DeviceState.INACTIVE:
        device.state = DeviceState.ACTIVE
        device.state_changed_at = utcnow()
    return device


def mark_inactive_devices(session: Session, actor: Actor, days: int) -> int:
    """Active devices not seen for ``days`` become inactive; returns how many."""
    cutoff = utcnow() - timedelta(days=days)
    ids = list(
        session.scalars(
            select(Device.id).where(
                Device.state == DeviceState.ACTIVE, Device.last_seen_at < cutoff
            )
        )
    )
    if not ids:
        return 0
    session.execute(
        update(Device)
        .where(Device.id.in_(ids))
        .values(state=DeviceState.INACTIVE, state_changed_at=utcnow())
    )
    record(session, actor, "device.mark_inactive", "device", "", after={"ids": ids, "days": days})
    return len(ids)


def _set_state(
    session: Session, actor: Actor, device: Device, target: DeviceState, action: str
) -> Device:
    before = view(device)
    device.state = target
    device.state_changed_at = utcnow()
    session.flush()
    record(session, actor, action, "device", device.id, before=before, after=view(device))
    return device


def view(device: Device) -> dict[str, Any]:
    return {
        "id": device.id,
        "user_id": device.user_id,
        "name": device.name,
        "hostname": device.hostname,
        "serial_number": device.serial_number,
        "hardware_uuid": device.hardware_uuid,
        "platform": str(device.platform),
        "state": str(device.state),
        "replaces_id": device.replaces_id,
        "replaced_by_id": device.replaced_by_id,
    }


def device_config(device: Device, public_url: str) -> dict[str, Any]:
    """What the agent needs to run: server URLs, profile policy and backup schedule."""
    return config_for(device.id, device.user, public_url)


def config_for(device_id: int, user: User, public_url: str) -> dict[str, Any]:
    """``device_config`` of a device known by its id and its user (activation has no ``Device``
    object for a new device)."""
    base = public_url.rstrip("/")
    profile = user.profile
    return {
        "server_url": base,
        "device_api": f"{base}/device/v1",
        "device_id": device_id,
        "user": {"id": user.id, "email": user.email},
        "profile": {"id": profile.id, "name": profile.name},
        "policy": profile.policy,
        "backup_interval_minutes": profile.backup_interval_minutes,
        "quota_bytes": user.quota_bytes,
        "heartbeat_seconds": 300,
    }
