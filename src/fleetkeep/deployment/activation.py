"""Activation: which user a device belongs to, whether it may join, and the device it becomes.

Modes, tried in this order (the first that applies decides):

* ``auth-key``   a one-time key made for one user (no deployment token needed);
* ``imd-v4``     a row of an uploaded device-mapping CSV names this device's serial/UUID/hostname;
* ``imd-v2``     username + domain (Active Directory), found in a deployment mapping's cache;
                 optionally proven by an LDAP bind with the user's password;
* ``imd-v5``     UPN (Entra ID): an existing user with that UPN, else the deployment cache;
* ``email``      an existing, active user with that email (mobile MDM and plain installs).

``decide`` does every read and raises ``ActivationRefused`` at the first rule that refuses,
appending each step to a trace; ``activate`` applies the decision and ``explain`` replays it
for an admin. One rule, one place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    String,
    Table,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, lazyload

from fleetkeep.audit.service import Actor, record
from fleetkeep.db import utcnow
from fleetkeep.deployment import abuse, tokens
from fleetkeep.deployment.authkeys import check_auth_key, consume_auth_key
from fleetkeep.deployment.devices import COUNTED_STATES, DEVICE_TOKEN_PREFIX
from fleetkeep.deployment.directory import (
    DirectoryCandidate,
    find_candidate,
    verify_password,
)
from fleetkeep.deployment.errors import ActivationRefused
from fleetkeep.deployment.mappings import normalize_identifier
from fleetkeep.deployment.models import (
    AuthKey,
    DeploymentToken,
    Device,
    DeviceMapping,
    DeviceState,
    IdentifierType,
    Platform,
    RestoreScope,
)
from fleetkeep.deployment.replacement import link_replacement
from fleetkeep.identity.models import User, UserState
from fleetkeep.identity.service import create_user, normalize_email
from fleetkeep.settings import Settings
from fleetkeep.tokens import hash_token, new_token

log = logging.getLogger("fleetkeep.deployment")


@dataclass(frozen=True)
class ActivationRequest:
    """What a device tells the server; secrets (token, key, password) are never logged."""

    hostname: str
    platform: Platform
    token: str | None = None
    auth_key: str | None = None
    email: str | None = None
    upn: str | None = None
    username: str | None = None
    domain: str | None = None
    password: str | None = None
    serial_number: str = ""
    hardware_uuid: str = ""
    os: str = ""
    agent_version: str = ""
    device_name: str = ""
    os_username: str = ""
    home_dir: str = ""
    source: str = "unknown"

    @property
    def serial_key(self) -> str | None:
        return self.serial_number.strip().upper() or None

    @property
    def uuid_key(self) -> str | None:
        return self.hardware_uuid.strip().lower() or None

    def public_view(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "platform": str(self.platform),
            "email": self.email,
            "upn": self.upn,
            "username": self.username,
            "domain": self.domain,
            "serial_number": self.serial_number,
            "hardware_uuid": self.hardware_uuid,
            "with_password": self.password is not None,
            "with_auth_key": self.auth_key is not None,
        }


@dataclass(frozen=True)
class Step:
    rule: str
    outcome: str  # "pass", "match", "skip" or "refuse"
    detail: str


@dataclass
class Decision:
    mode: str = ""
    user: User | None = None
    candidate: DirectoryCandidate | None = None
    token: DeploymentToken | None = None
    auth_key: AuthKey | None = None
    mapping: DeviceMapping | None = None
    existing: Device | None = None
    replaces: Device | None = None
    scope: RestoreScope = RestoreScope.ALL
    steps: list[Step] = field(default_factory=list)
    # Activation (not explain) locks the user it finds: one activation per user at a time
    # keeps the device limit exact under concurrency.
    lock: bool = False
    # Read along with the credentials: refusals in the window (by source, by token) and
    # the id of the IMD v4 row for this device, if any.
    failures: tuple[int, int] | None = None
    mapping_read: bool = False
    mapping_id: int | None = None

    def note(self, rule: str, outcome: str, detail: str) -> None:
        self.steps.append(Step(rule, outcome, detail))

    def refuse(self, rule: str, code: str, reason: str, **extra: Any) -> ActivationRefused:
        self.steps.append(Step(rule, "refuse", f"{code}: {reason}"))
        return ActivationRefused(code, reason, **extra)


@dataclass(frozen=True)
class Activation:
    device_id: int
    user: User
    device_token: str
    mode: str
    reactivated: bool
    restore_plan_id: int | None


PasswordCheck = Callable[[Session, DirectoryCandidate, str], None]


# Deciding ------------------------------------------------------------------------------------


def decide(
    session: Session,
    req: ActivationRequest,
    decision: Decision,
    *,
    check_password: PasswordCheck | None = verify_password,
    credentials: bool = True,
    failures: dict[str, Any] | None = None,
) -> Decision:
    """Resolve credentials, user and device identity; raises at the first refusing rule.

    ``credentials=False`` (explain without a token) skips the token/auth-key rule.
    ``failures`` (``abuse.failure_params``) are for the refusal counts read with the
    credentials; explain has no use for them.
    """
    if credentials:
        _credentials(session, req, decision, failures or abuse.failure_params(0, req.source))
    else:
        decision.note("token", "skip", "no token given; token rules not checked")
    _user(session, req, decision, check_password)
    _scope(decision)
    _device(session, req, decision)
    return decision


def _credentials(
    session: Session, req: ActivationRequest, d: Decision, failures: dict[str, Any]
) -> None:
    if req.auth_key:
        try:
            d.auth_key, by_source = check_auth_key(session, req.auth_key, failures)
            d.failures = (by_source, 0)
        except ActivationRefused as exc:
            d.note("auth key", "refuse", f"{exc.code}: {exc.detail}")
            raise
        d.note(
            "auth key", "pass", f"one-time key {d.auth_key.prefix}… of user {d.auth_key.user_id}"
        )
        return
    if not req.token:
        raise d.refuse("token", "token_missing", "send a deployment token or a one-time auth key")
    params = {"token_hash": hash_token(req.token), **failures, **_identifiers(req)}
    row = session.execute(_TOKEN_READ, params).first()
    if row is not None:
        d.failures = (row.by_source, row.by_token)
        d.mapping_read, d.mapping_id = True, row.mapping_id
    try:
        d.token = tokens.ensure_live(row[0] if row is not None else None)
    except ActivationRefused as exc:
        d.note("token", "refuse", f"{exc.code}: {exc.detail}")
        raise
    d.note("token", "pass", f"deployment token {d.token.id} ({d.token.label!r}) is live")


def _user(
    session: Session, req: ActivationRequest, d: Decision, check_password: PasswordCheck | None
) -> None:
    if d.auth_key is not None:
        d.mode = "auth-key"
        d.user = _find_user(session, d, _USER_BY_ID, d.auth_key.user_id)
    elif (mapping := _device_mapping(session, req, d)) is not None:
        d.mode, d.mapping = "imd-v4", mapping
        d.user = _find_user(session, d, _USER_BY_ID, mapping.user_id)
        d.note(
            "device mapping",
            "match",
            f"mapping row {mapping.id} ({mapping.identifier_type} {mapping.identifier}) "
            f"→ {mapping.email}",
        )
    elif req.username and req.domain:
        d.mode = "imd-v2"
        _directory_user(session, d, "username", req.username, req.domain)
        if d.candidate is not None and req.password is not None and check_password is not None:
            check_password(session, d.candidate, req.password)
            d.note("password", "pass", "LDAP bind with the given password succeeded")
    elif req.upn:
        d.mode = "imd-v5"
        d.user = _find_user(session, d, _USER_BY_UPN, req.upn.lower())
        if d.user is None:
            _directory_user(session, d, "upn", req.upn, None)
        else:
            d.note("user", "match", f"user {d.user.id} has UPN {req.upn}")
    elif req.email:
        d.mode = "email"
        d.user = _find_user(session, d, _USER_BY_EMAIL, normalize_email(req.email))
    else:
        raise d.refuse(
            "identity",
            "identity_missing",
            "send an email, a UPN, or a username and domain (or a device listed in a mapping)",
        )
    if d.user is None and d.candidate is None:
        who = req.email or req.upn or (f"{req.domain}\\{req.username}" if req.username else "")
        raise d.refuse("user", "user_not_found", f"no user matches {who!r}")
    if d.user is not None:
        _user_state(req, d, d.user)


def _user_queries(where: ColumnElement[bool]) -> tuple[Select[User], Select[User]]:
    """(the query, the query that locks the user's row), built once. Activation reads a user's
    profile (device limit, configuration), never their storage region."""
    query = select(User).options(lazyload(User.storage_region)).where(where)
    return query, query.with_for_update(of=User)


_USER_BY_ID = _user_queries(User.id == bindparam("value"))
_USER_BY_EMAIL = _user_queries(User.email_normalized == bindparam("value"))
_USER_BY_UPN = _user_queries(func.lower(User.upn) == bindparam("value"))


def _find_user(
    session: Session,
    d: Decision,
    queries: tuple[Select[User], Select[User]],
    value: object,
) -> User | None:
    return session.scalar(queries[d.lock], {"value": value})


def _directory_user(session: Session, d: Decision, by: str, value: str, domain: str | None) -> None:
    """IMD v2/v5: the user comes from a deployment mapping's cache of the last directory sync."""
    candidate = find_candidate(session, by=by, value=value, domain=domain)
    if candidate is None:
        label = f"{domain}\\{value}" if domain else value
        raise d.refuse(
            "deployment cache",
            "user_not_found",
            f"{label} is in no deployment mapping of any directory (as of the last sync)",
        )
    d.note(
        "deployment cache",
        "match",
        f"{candidate.email} via mapping {candidate.mapping_id} of directory "
        f"{candidate.directory_id}",
    )
    d.candidate = candidate
    d.user = _find_user(session, d, _USER_BY_EMAIL, normalize_email(candidate.email))
    if d.user is not None:
        d.note("user", "match", f"existing user {d.user.id} ({d.user.email})")
    else:
        d.note("user", "pass", f"user {candidate.email} will be created from the mapping")


def _user_state(req: ActivationRequest, d: Decision, user: User) -> None:
    if user.state is UserState.PRESERVED:
        raise d.refuse(
            "user", "user_preserved", f"user {user.email} is preserved and cannot add devices"
        )
    if user.state is UserState.DELETED:
        raise d.refuse("user", "user_deleted", f"user {user.email} was deleted")
    if req.email and normalize_email(req.email) != user.email_normalized:
        raise d.refuse(
            "email",
            "email_mismatch",
            f"the device says {req.email} but the {d.mode} match is {user.email}",
        )
    d.note("user", "pass", f"user {user.id} ({user.email}) is active")


def _scope(d: Decision) -> None:
    if d.token is None or not d.token.profile_ids:
        return
    profile_id = d.user.profile_id if d.user is not None else _candidate_profile(d)
    if profile_id not in d.token.profile_ids:
        raise d.refuse(
            "token scope",
            "profile_not_allowed",
            f"deployment token {d.token.label!r} may not activate devices into profile "
            f"{profile_id}",
        )
    d.note("token scope", "pass", f"profile {profile_id} is in the token's scope")


def _candidate_profile(d: Decision) -> int:
    assert d.candidate is not None
    return d.candidate.profile_id


def _device(session: Session, req: ActivationRequest, d: Decision) -> None:
    user_id = d.user.id if d.user is not None else None
    # One read answers the hardware match, the hostname match, the limit and replacement.
    existing, live = _known_devices(session, req, user_id)
    if existing is not None and existing.user_id != user_id:
        raise d.refuse(
            "device identity",
            "device_claimed",
            f"serial/UUID of this device belongs to device {existing.id} of another user",
        )
    if existing is None and not (req.serial_key or req.uuid_key):
        existing = next(
            (
                device
                for device in live
                if device.hostname.lower() == req.hostname.lower()
                and device.serial_key is None
                and device.uuid_key is None
            ),
            None,
        )
    if existing is not None and existing.state is DeviceState.DISABLED:
        raise d.refuse("device identity", "device_disabled", f"device {existing.id} is disabled")
    if existing is not None and existing.state is DeviceState.PENDING_REPLACEMENT:
        # The same hardware came back (re-imaged): it replaces its former self.
        d.replaces, d.scope = existing, existing.replacement_scope or RestoreScope.ALL
        d.note(
            "replacement", "match", f"same hardware as device {existing.id}, marked for replacement"
        )
        existing = None
    if existing is not None:
        d.existing = existing
        d.note("device identity", "match", f"already device {existing.id}: re-activation")
        return
    if d.user is None:
        d.note("device limit", "pass", "a new user has no devices yet")
        return
    if d.replaces is None:
        _find_replaced(d, live)
    limit = d.user.profile.max_devices_per_user
    counted = sum(device.state in COUNTED_STATES for device in live)
    if counted >= limit:
        raise d.refuse(
            "device limit",
            "device_limit_reached",
            f"user {d.user.email} already has {counted} device(s); the profile allows {limit}",
            limit=limit,
        )
    d.note("device limit", "pass", f"{counted} of {limit} devices in use")


def _find_replaced(d: Decision, live: list[Device]) -> None:
    if d.mapping is not None and d.mapping.old_device_name:
        name = d.mapping.old_device_name.lower()
        old = next((x for x in live if name in (x.name.lower(), x.hostname.lower())), None)
        if old is not None:
            d.replaces = old
            d.scope = d.mapping.restore_scope or RestoreScope.ALL
            d.note("replacement", "match", f"mapping row names old device {old.id} ({old.name})")
            return
        d.note("replacement", "skip", f"old device {d.mapping.old_device_name!r} not found")
    pending = [x for x in live if x.state is DeviceState.PENDING_REPLACEMENT]
    if pending:
        old = min(pending, key=lambda x: (x.state_changed_at, x.id))
        d.replaces, d.scope = old, old.replacement_scope or RestoreScope.ALL
        d.note("replacement", "match", f"device {old.id} ({old.name}) is marked for replacement")


def _known_devices(
    session: Session, req: ActivationRequest, user_id: int | None
) -> tuple[Device | None, list[Device]]:
    """(the device with this hardware's UUID or serial, the user's live devices by id)."""
    if not (req.uuid_key or req.serial_key or user_id is not None):
        return None, []
    params = {"uuid_key": req.uuid_key, "serial_key": req.serial_key, "user_id": user_id}
    found = list(session.scalars(_KNOWN_DEVICES, params))
    live = [x for x in found if x.user_id == user_id and x.state is not DeviceState.DECOMMISSIONED]
    hardware = [
        x
        for x in found
        if (req.uuid_key and x.uuid_key == req.uuid_key)
        or (req.serial_key and x.serial_key == req.serial_key)
    ]
    # A UUID match outranks a serial match (serials are less unique across vendors).
    hardware.sort(key=lambda x: x.uuid_key != req.uuid_key)
    return (hardware[0] if hardware else None), live


# A missing key is NULL, which matches nothing. Not joined to their users: the only user whose
# devices are used further is already in the session, and a lazy load of it is answered from
# the identity map without a query.
_KNOWN_DEVICES = (
    select(Device)
    .options(lazyload(Device.user))
    .where(
        or_(
            Device.uuid_key == bindparam("uuid_key", type_=String),
            Device.serial_key == bindparam("serial_key", type_=String),
            and_(
                Device.user_id == bindparam("user_id", type_=Integer),
                Device.state != DeviceState.DECOMMISSIONED,
            ),
        )
    )
    .order_by(Device.id)
)


def _device_mapping(session: Session, req: ActivationRequest, d: Decision) -> DeviceMapping | None:
    """An IMD v4 row for this device: unused, or used by the very device now re-activating."""
    if d.mapping_read:
        return session.get(DeviceMapping, d.mapping_id) if d.mapping_id is not None else None
    return session.scalar(_DEVICE_MAPPING, _identifiers(req))


def _identifiers(req: ActivationRequest) -> dict[str, str | None]:
    """The parameters of ``_MAPPING_ID``: this device's identifiers as a mapping stores them."""
    return {
        kind.name: normalize_identifier(kind, raw) if raw.strip() else None
        for kind, raw in (
            (IdentifierType.SERIAL_NUMBER, req.serial_number),
            (IdentifierType.UUID, req.hardware_uuid),
            (IdentifierType.HOSTNAME, req.hostname),
        )
    }


# Built once; a missing identifier is NULL, which matches nothing. A used row counts while its
# device is not decommissioned (no device: the outer join gives NULL).
_MAPPING_ID = (
    select(DeviceMapping.id)
    .outerjoin(Device, Device.id == DeviceMapping.device_id)
    .where(
        or_(
            *(
                and_(
                    DeviceMapping.identifier_type == kind,
                    DeviceMapping.identifier == bindparam(kind.name, type_=String),
                )
                for kind in IdentifierType
            )
        ),
        or_(DeviceMapping.consumed_at.is_(None), Device.state != DeviceState.DECOMMISSIONED),
    )
    .order_by(DeviceMapping.consumed_at.is_not(None), DeviceMapping.id)
    .limit(1)
    .correlate(None)  # standalone, even inside a query of device_mappings
    .scalar_subquery()
)
_DEVICE_MAPPING = select(DeviceMapping).where(DeviceMapping.id == _MAPPING_ID)
# A deployment token activation's first read: the token, the refusals counted against the
# source and the token, and the device's mapping row, in one round trip.
_TOKEN_READ = select(
    DeploymentToken,
    abuse.FAILURES_BY_SOURCE.label("by_source"),
    abuse.failures_by_token(DeploymentToken.id).label("by_token"),
    _MAPPING_ID.label("mapping_id"),
).where(DeploymentToken.token_hash == bindparam("token_hash"))


@dataclass(frozen=True)
class Explanation:
    outcome: str  # "activate", "reactivate" or "refuse"
    code: str | None
    reason: str
    mode: str
    user_id: int | None
    user_email: str | None
    device_id: int | None
    replaces_device_id: int | None
    steps: list[Step]


def explain(session: Session, req: ActivationRequest) -> Explanation:
    """Replay the decision for ``req`` without changing anything (no bind, nothing consumed)."""
    d = Decision()
    try:
        decide(session, req, d, check_password=None, credentials=bool(req.token or req.auth_key))
    except ActivationRefused as exc:
        return Explanation(
            "refuse",
            exc.code,
            exc.detail,
            d.mode,
            d.user.id if d.user else None,
            d.user.email if d.user else None,
            None,
            None,
            d.steps,
        )
    email = d.user.email if d.user else d.candidate.email if d.candidate else None
    if d.existing is not None:
        outcome = "reactivate"
        reason = f"matches device {d.existing.id} ({d.existing.hostname}) of {email}"
    else:
        outcome = "activate"
        reason = f"a new device for {email} via {d.mode}"
        if d.replaces is not None:
            reason += f", replacing device {d.replaces.id} ({d.replaces.name}, restore {d.scope})"
    return Explanation(
        outcome,
        None,
        reason,
        d.mode,
        d.user.id if d.user else None,
        email,
        d.existing.id if d.existing else None,
        d.replaces.id if d.replaces else None,
        d.steps,
    )


# Applying ------------------------------------------------------------------------------------


def activate(
    session: Session,
    settings: Settings,
    req: ActivationRequest,
    *,
    check_password: PasswordCheck | None = verify_password,
) -> Activation:
    """Activate (or re-activate) a device. On refusal everything is rolled back, then the
    refusal is recorded (audit, rate-limit counter, auth key consumed) for the caller to commit.
    """
    try:
        return _attempt(session, settings, req, check_password)
    except IntegrityError:
        # A concurrent activation of the same hardware (or the first activation of the same
        # directory user) committed first; a second attempt sees it and re-activates.
        session.rollback()
        return _attempt(session, settings, req, check_password)


def _attempt(
    session: Session,
    settings: Settings,
    req: ActivationRequest,
    check_password: PasswordCheck | None,
) -> Activation:
    decision = Decision(lock=True)
    refused: ActivationRefused | None = None
    failures = abuse.failure_params(settings.activation_failure_window_seconds, req.source)
    try:
        decide(session, req, decision, check_password=check_password, failures=failures)
    except ActivationRefused as exc:
        refused = exc
    # Checked once the token is known, whatever the outcome: a rate-limited caller learns
    # nothing about its guess.
    token_id = decision.token.id if decision.token else None
    if decision.failures is not None:
        limit = abuse.over_limit(settings, req.source, token_id, *decision.failures)
    else:
        limit = abuse.exceeded_limit(session, settings, req.source, token_id)
    if limit is not None:
        session.rollback()
        abuse.record_limited(session, _actor(req), limit, "device.activation_refused")
        raise limit.error()
    try:
        if refused is not None:
            raise refused
        return _apply(session, req, decision)
    except ActivationRefused as exc:
        session.rollback()
        _record_refusal(session, req, decision, exc)
        raise


def _actor(req: ActivationRequest) -> Actor:
    return Actor(f"device:{req.hostname}", source_ip=req.source)


def _apply(session: Session, req: ActivationRequest, d: Decision) -> Activation:
    actor = _actor(req)
    # A user found by ``decide`` is locked already; a new directory user is not yet visible.
    user = d.user if d.user is not None else _create_directory_user(session, actor, d)
    plain, digest = new_token(DEVICE_TOKEN_PREFIX)
    reactivated = d.existing is not None
    if d.existing is not None:
        _refresh(d.existing, req, d.mode)
        d.existing.token_hash = digest
        device_id, serial_number = d.existing.id, d.existing.serial_number
    else:
        device_id, serial_number = _insert_device(session, req, d, user, digest), req.serial_number
    plan_id = None
    if d.replaces is not None and not reactivated:
        device = session.get_one(Device, device_id)
        plan_id = link_replacement(session, actor, d.replaces, device, d.scope).id
    if d.mapping is not None and d.mapping.consumed_at is None:
        d.mapping.consumed_at = utcnow()
        d.mapping.device_id = device_id
    if d.auth_key is not None:
        consume_auth_key(session, d.auth_key)
    record(
        session,
        actor,
        "device.reactivate" if reactivated else "device.activate",
        "device",
        device_id,
        after={
            "user_id": user.id,
            "mode": d.mode,
            "token_id": d.token.id if d.token else None,
            "hostname": req.hostname,
            "serial_number": serial_number,
        },
        at_once=True,
    )
    if d.token is not None:
        tokens.record_use(session, d.token.id, device_id)
    session.flush()
    return Activation(device_id, user, plain, d.mode, reactivated, plan_id)


def _insert_device(
    session: Session, req: ActivationRequest, d: Decision, user: User, token_hash: str
) -> int:
    """The new device's id. A Core INSERT … RETURNING: no ORM flush on every activation."""
    if d.replaces is not None and d.replaces.id is not None:
        # Release the old hardware keys first: a re-imaged device keeps its serial.
        d.replaces.serial_key = None
        d.replaces.uuid_key = None
        session.flush()
    values = {
        "user_id": user.id,
        "name": d.mapping.device_name if d.mapping is not None else req.device_name or req.hostname,
        "hostname": req.hostname,
        "serial_number": req.serial_number,
        "hardware_uuid": req.hardware_uuid,
        "serial_key": req.serial_key,
        "uuid_key": req.uuid_key,
        "platform": req.platform,
        "os": req.os,
        "agent_version": req.agent_version,
        "os_username": req.os_username,
        "home_dir": req.home_dir,
        "activation_mode": d.mode,
        "state": DeviceState.ACTIVE,
        "token_hash": token_hash,
    }
    device_id: int = session.execute(_INSERT_DEVICE, values).scalar_one()
    return device_id


_DEVICES = cast(Table, Device.__table__)
_INSERT_DEVICE = insert(_DEVICES).returning(_DEVICES.c.id)


def _refresh(device: Device, req: ActivationRequest, mode: str) -> None:
    now = utcnow()
    device.hostname = req.hostname
    device.os = req.os
    device.platform = req.platform
    device.agent_version = req.agent_version
    device.os_username = req.os_username
    device.home_dir = req.home_dir
    device.activation_mode = mode
    device.activated_at = now
    device.last_seen_at = now
    if device.state is DeviceState.INACTIVE:
        device.state, device.state_changed_at = DeviceState.ACTIVE, now


def _create_directory_user(session: Session, actor: Actor, d: Decision) -> User:
    """First activation of a directory user: the account gets the mapping's profile/region/quota."""
    candidate = d.candidate
    assert candidate is not None
    fields: dict[str, Any] = {
        "email": candidate.email,
        "username": candidate.username,
        "display_name": candidate.display_name,
        "profile_id": candidate.profile_id,
        "storage_region_id": candidate.storage_region_id,
        "source": candidate.source,
        "external_id": candidate.external_id,
        "dn": candidate.dn or None,
        "upn": candidate.upn or None,
    }
    if candidate.quota is not None:
        fields["quota_value"], fields["quota_unit"] = candidate.quota
    user = create_user(session, actor, **fields)
    d.user = user
    return user


# Refusals ------------------------------------------------------------------------------------


def _record_refusal(
    session: Session, req: ActivationRequest, d: Decision, exc: ActivationRefused
) -> None:
    token_id = d.token.id if d.token is not None else exc.extra.get("token_id")
    abuse.count_failure(session, req.source, exc.code, token_id)
    if req.auth_key:
        consume_auth_key(session, None, secret=req.auth_key)
    record(
        session,
        _actor(req),
        "device.activation_refused",
        "device",
        "",
        after={"code": exc.code, "reason": exc.detail, "mode": d.mode, **req.public_view()},
    )
    log.info("activation refused", extra={"code": exc.code, "source": req.source})
    session.flush()


def record_invalid_request(session: Session, source: str, errors: list[dict[str, str]]) -> None:
    """A malformed activation request (oversized or missing fields): audited, counted, no change."""
    abuse.count_failure(session, source, "invalid_input")
    record(
        session,
        Actor(f"device@{source}", source_ip=source),
        "device.activation_refused",
        "device",
        "",
        after={"code": "invalid_input", "errors": errors},
    )
