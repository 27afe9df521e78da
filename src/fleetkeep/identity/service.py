"""Profiles, storage regions and users: every identity rule lives here.

User lifecycle::

    active ──preserve──▶ preserved ──restore──▶ active
      │                     │
      └──────delete─────────┴──▶ deleted ──restore (within retention)──▶ active
                                    └──purge after retention──▶ (gone)

``preserved_by`` remembers who preserved a user (``admin``, ``sync``, ``scim`` …) so a source
only reactivates users that it preserved itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, bindparam, delete, func, or_, select
from sqlalchemy.orm import Session

from fleetkeep.audit.service import Actor, record
from fleetkeep.db import utcnow
from fleetkeep.errors import Conflict, InvalidInput, NotFound
from fleetkeep.identity.models import Profile, QuotaUnit, StorageRegion, User, UserState
from fleetkeep.vault.policy import validate_policy

ALLOWED: dict[UserState, set[UserState]] = {
    UserState.ACTIVE: {UserState.PRESERVED, UserState.DELETED},
    UserState.PRESERVED: {UserState.ACTIVE, UserState.DELETED},
    UserState.DELETED: {UserState.ACTIVE},
}

_PROFILE_FIELDS = {
    "name",
    "description",
    "login_method",
    "max_devices_per_user",
    "backup_interval_minutes",
    "policy",
    "default_quota_value",
    "default_quota_unit",
}
_REGION_FIELDS = {"name", "region", "store_url"}
_USER_FIELDS = {
    "email",
    "username",
    "display_name",
    "profile_id",
    "storage_region_id",
    "quota_value",
    "quota_unit",
    "source",
    "external_id",
    "dn",
    "upn",
}


def normalize_email(email: str) -> str:
    return email.strip().lower()


# str.isspace and \s agree (both are Py_UNICODE_ISSPACE); the regex checks 100,000 imported
# addresses in a fraction of the generator's time.
_SPACE = re.compile(r"\s")


def validate_email(email: str) -> str:
    email = email.strip()
    local, _, domain = email.rpartition("@")
    if not local or "." not in domain or _SPACE.search(email) or len(email) > 320:
        raise InvalidInput(f"email {email!r} is not a valid address", field="email")
    return email


# Profiles -----------------------------------------------------------------------------------


def create_profile(session: Session, actor: Actor, **fields: Any) -> Profile:
    _only(fields, _PROFILE_FIELDS)
    _unique_name(session, Profile, fields["name"])
    if "policy" in fields:
        fields["policy"] = validate_policy(fields["policy"])
    profile = Profile(**fields)
    session.add(profile)
    session.flush()
    record(session, actor, "profile.create", "profile", profile.id, after=profile_view(profile))
    return profile


def update_profile(session: Session, actor: Actor, profile_id: int, **fields: Any) -> Profile:
    _only(fields, _PROFILE_FIELDS)
    profile = get_profile(session, profile_id)
    if "name" in fields and fields["name"] != profile.name:
        _unique_name(session, Profile, fields["name"])
    if fields.get("policy") is not None:
        fields["policy"] = validate_policy(fields["policy"])
    before = profile_view(profile)
    for key, value in fields.items():
        setattr(profile, key, value)
    session.flush()
    record(
        session,
        actor,
        "profile.update",
        "profile",
        profile.id,
        before=before,
        after=profile_view(profile),
    )
    return profile


def delete_profile(session: Session, actor: Actor, profile_id: int) -> None:
    profile = get_profile(session, profile_id)
    in_use = session.scalar(select(func.count()).where(User.profile_id == profile_id)) or 0
    if in_use:
        raise Conflict(
            f"profile {profile.name!r} still has {in_use} user(s)", code="profile_in_use"
        )
    record(session, actor, "profile.delete", "profile", profile.id, before=profile_view(profile))
    session.delete(profile)


def get_profile(session: Session, profile_id: int) -> Profile:
    profile = session.get(Profile, profile_id)
    if profile is None:
        raise _no_profile(profile_id)
    return profile


def _no_profile(profile_id: int) -> NotFound:
    return NotFound(f"profile {profile_id} does not exist", field="profile_id")


def list_profiles(session: Session) -> list[Profile]:
    return list(session.scalars(select(Profile).order_by(Profile.id)))


def find_profile(session: Session, ref: str) -> Profile:
    """By id or by name, for the CLI and CSV files."""
    found: Profile = _find(session, Profile, ref, "profile")
    return found


def profile_view(profile: Profile) -> dict[str, Any]:
    return {
        "id": profile.id,
        "name": profile.name,
        "description": profile.description,
        "login_method": profile.login_method,
        "max_devices_per_user": profile.max_devices_per_user,
        "backup_interval_minutes": profile.backup_interval_minutes,
        "policy": profile.policy,
        "default_quota_value": profile.default_quota_value,
        "default_quota_unit": str(profile.default_quota_unit),
    }


# Storage regions ----------------------------------------------------------------------------


def create_region(session: Session, actor: Actor, **fields: Any) -> StorageRegion:
    _only(fields, _REGION_FIELDS)
    _unique_name(session, StorageRegion, fields["name"])
    _check_store_url(fields["store_url"])
    region = StorageRegion(**fields)
    session.add(region)
    session.flush()
    record(session, actor, "region.create", "storage_region", region.id, after=region_view(region))
    return region


def update_region(session: Session, actor: Actor, region_id: int, **fields: Any) -> StorageRegion:
    _only(fields, _REGION_FIELDS)
    region = get_region(session, region_id)
    if "name" in fields and fields["name"] != region.name:
        _unique_name(session, StorageRegion, fields["name"])
    if "store_url" in fields:
        _check_store_url(fields["store_url"])
    before = region_view(region)
    for key, value in fields.items():
        setattr(region, key, value)
    session.flush()
    record(
        session,
        actor,
        "region.update",
        "storage_region",
        region.id,
        before=before,
        after=region_view(region),
    )
    return region


def delete_region(session: Session, actor: Actor, region_id: int) -> None:
    region = get_region(session, region_id)
    in_use = session.scalar(select(func.count()).where(User.storage_region_id == region_id)) or 0
    if in_use:
        raise Conflict(
            f"storage region {region.name!r} still has {in_use} user(s)", code="region_in_use"
        )
    record(session, actor, "region.delete", "storage_region", region.id, before=region_view(region))
    session.delete(region)


def get_region(session: Session, region_id: int) -> StorageRegion:
    region = session.get(StorageRegion, region_id)
    if region is None:
        raise _no_region(region_id)
    return region


def _no_region(region_id: int) -> NotFound:
    return NotFound(f"storage region {region_id} does not exist", field="storage_region_id")


def list_regions(session: Session) -> list[StorageRegion]:
    return list(session.scalars(select(StorageRegion).order_by(StorageRegion.id)))


def find_region(session: Session, ref: str) -> StorageRegion:
    found: StorageRegion = _find(session, StorageRegion, ref, "storage region")
    return found


def region_view(region: StorageRegion) -> dict[str, Any]:
    return {
        "id": region.id,
        "name": region.name,
        "region": region.region,
        "store_url": region.store_url,
    }


def _check_store_url(url: str) -> None:
    if not url.startswith(("file://", "s3://")):
        raise InvalidInput("store_url must start with file:// or s3://", field="store_url")


# Users --------------------------------------------------------------------------------------


def _scalar(query: Select[Any], name: str) -> Any:
    return query.scalar_subquery().label(name)


# What a new user needs checked, in one round trip (user creation is a request storm for SCIM
# and activation): its e-mail is free, its profile exists (with its default quota), its storage
# region exists. Built once, with bind parameters.
_taken = select(User.id, User.state).where(User.email_normalized == bindparam("email"))
_profile = select(Profile.default_quota_value, Profile.default_quota_unit).where(
    Profile.id == bindparam("profile_id")
)
_CREATE_CHECKS = select(
    _scalar(_taken.with_only_columns(User.id), "taken_id"),
    _scalar(_taken.with_only_columns(User.state), "taken_state"),
    _scalar(_profile.with_only_columns(Profile.default_quota_value), "quota_value"),
    _scalar(_profile.with_only_columns(Profile.default_quota_unit), "quota_unit"),
    _scalar(
        select(StorageRegion.id).where(StorageRegion.id == bindparam("region_id")), "region_id"
    ),
)


def create_user(session: Session, actor: Actor, **fields: Any) -> User:
    _only(fields, _USER_FIELDS)
    email = validate_email(fields.pop("email"))
    normalized = normalize_email(email)
    checks = session.execute(
        _CREATE_CHECKS,
        {
            "email": normalized,
            "profile_id": fields["profile_id"],
            "region_id": fields["storage_region_id"],
        },
    ).one()
    if checks.taken_id is not None:
        raise Conflict(
            f"a user with email {email} already exists (id {checks.taken_id}, "
            f"{checks.taken_state})",
            code="email_taken",
            field="email",
        )
    if checks.quota_value is None:
        raise _no_profile(fields["profile_id"])
    if checks.region_id is None:
        raise _no_region(fields["storage_region_id"])
    if "quota_value" not in fields:
        fields["quota_value"] = checks.quota_value
        fields["quota_unit"] = checks.quota_unit
    user = User(email=email, email_normalized=normalized, state=UserState.ACTIVE, **fields)
    session.add(user)
    session.flush()
    # At once: the flush just sent the user (and anything recorded before), so the trail
    # keeps its order without a second unit-of-work pass at commit.
    record(session, actor, "user.create", "user", user.id, after=user_view(user), at_once=True)
    return user


def update_user(session: Session, actor: Actor, user_id: int, **fields: Any) -> User:
    _only(fields, _USER_FIELDS)
    user = get_user(session, user_id)
    before = user_view(user)
    if "email" in fields:
        email = validate_email(fields.pop("email"))
        normalized = normalize_email(email)
        if normalized != user.email_normalized:
            clash = session.scalar(select(User.id).where(User.email_normalized == normalized))
            if clash is not None:
                raise Conflict(
                    f"a user with email {email} already exists (id {clash})",
                    code="email_taken",
                    field="email",
                )
        user.email, user.email_normalized = email, normalized
    if "profile_id" in fields:
        get_profile(session, fields["profile_id"])
    if "storage_region_id" in fields:
        get_region(session, fields["storage_region_id"])
    for key, value in fields.items():
        setattr(user, key, value)
    session.flush()
    after = user_view(user)
    if after != before:
        record(session, actor, "user.update", "user", user.id, before=before, after=after)
    return user


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} does not exist")
    return user


def find_user(session: Session, ref: str) -> User:
    """By id or by email (case-insensitive)."""
    if ref.isdigit():
        return get_user(session, int(ref))
    user = session.scalar(select(User).where(User.email_normalized == normalize_email(ref)))
    if user is None:
        raise NotFound(f"no user with email {ref}")
    return user


def list_users(
    session: Session,
    *,
    after_id: int | None = None,
    limit: int = 100,
    state: UserState | None = None,
    profile_id: int | None = None,
    storage_region_id: int | None = None,
    source: str | None = None,
    q: str | None = None,
) -> list[User]:
    query = select(User).order_by(User.id).limit(limit)
    if after_id is not None:
        query = query.where(User.id > after_id)
    if state is not None:
        query = query.where(User.state == state)
    if profile_id is not None:
        query = query.where(User.profile_id == profile_id)
    if storage_region_id is not None:
        query = query.where(User.storage_region_id == storage_region_id)
    if source:
        query = query.where(User.source == source)
    if q:
        pattern = f"%{q.strip().lower()}%"
        query = query.where(
            or_(
                User.email_normalized.like(pattern),
                func.lower(User.username).like(pattern),
                func.lower(User.display_name).like(pattern),
            )
        )
    return list(session.scalars(query))


def count_users_by_state(session: Session) -> dict[str, int]:
    counts = {state.value: 0 for state in UserState}
    for state, n in session.execute(select(User.state, func.count()).group_by(User.state)):
        counts[UserState(state).value] = n
    return counts


def change_state(
    session: Session, actor: Actor, user: User, target: UserState, *, by: str = "admin"
) -> User:
    """Move a user along the lifecycle; ``by`` is recorded as who preserved them."""
    if user.state is target:
        raise Conflict(f"user {user.id} is already {target}", code="illegal_transition")
    if target not in ALLOWED[user.state]:
        raise Conflict(f"a {user.state} user cannot become {target}", code="illegal_transition")
    before = user_view(user)
    user.state = target
    user.preserved_by = by if target is UserState.PRESERVED else None
    user.state_changed_at = utcnow()
    session.flush()
    record(
        session,
        actor,
        f"user.{_verb(target)}",
        "user",
        user.id,
        before=before,
        after=user_view(user),
    )
    return user


def preserve_user(session: Session, actor: Actor, user_id: int, by: str = "admin") -> User:
    return change_state(session, actor, get_user(session, user_id), UserState.PRESERVED, by=by)


def restore_user(session: Session, actor: Actor, user_id: int) -> User:
    return change_state(session, actor, get_user(session, user_id), UserState.ACTIVE)


def delete_user(session: Session, actor: Actor, user_id: int) -> User:
    return change_state(session, actor, get_user(session, user_id), UserState.DELETED)


def purge_deleted_users(session: Session, actor: Actor, retention_days: int) -> int:
    """Remove users deleted more than ``retention_days`` ago; returns how many."""
    cutoff = utcnow() - timedelta(days=retention_days)
    ids = list(
        session.scalars(
            select(User.id).where(User.state == UserState.DELETED, User.state_changed_at < cutoff)
        )
    )
    if not ids:
        return 0
    for chunk in _chunks(ids, 500):
        session.execute(delete(User).where(User.id.in_(chunk)))
        for user_id in chunk:
            record(session, actor, "user.purge", "user", user_id)
    return len(ids)


def user_view(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "username": user.username,
        "display_name": user.display_name,
        "state": str(user.state),
        "preserved_by": user.preserved_by,
        "profile_id": user.profile_id,
        "storage_region_id": user.storage_region_id,
        "quota_value": user.quota_value,
        "quota_unit": str(user.quota_unit),
        "source": user.source,
        "external_id": user.external_id,
        "dn": user.dn,
        "upn": user.upn,
    }


def parse_quota(text: str) -> tuple[int, QuotaUnit]:
    """``"50GB"``, ``"50 GB"`` or ``"0"`` (unlimited) → (value, unit)."""
    cleaned = text.strip().upper().replace(" ", "")
    if cleaned in {"0", "UNLIMITED"}:
        return 0, QuotaUnit.GB
    for unit in QuotaUnit:
        if cleaned.endswith(unit.value):
            number = cleaned[: -len(unit.value)]
            if number.isdigit():
                return int(number), unit
    raise InvalidInput(f"quota {text!r} is not like 50GB, 500MB, 2TB or 0", field="quota")


def _verb(state: UserState) -> str:
    return {"active": "restore", "preserved": "preserve", "deleted": "delete"}[state.value]


def _only(fields: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(fields) - allowed
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")


def _unique_name(session: Session, model: type[Profile] | type[StorageRegion], name: str) -> None:
    if not name or not name.strip():
        raise InvalidInput("name must not be empty", field="name")
    if session.scalar(select(model.id).where(model.name == name)) is not None:
        raise Conflict(
            f"{model.__tablename__[:-1].replace('_', ' ')} {name!r} already exists",
            code="name_taken",
            field="name",
        )


def _find(session: Session, model: type[Profile] | type[StorageRegion], ref: str, what: str) -> Any:
    found = session.get(model, int(ref)) if ref.isdigit() else None
    if found is None:
        found = session.scalar(select(model).where(model.name == ref))
    if found is None:
        raise NotFound(f"no {what} named {ref!r}")
    return found


def _chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
