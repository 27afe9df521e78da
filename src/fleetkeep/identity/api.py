"""``/api/v1`` profiles, storage regions and users: parse, call the service, shape."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from fleetkeep.identity import service
from fleetkeep.identity.models import Profile, User, UserState
from fleetkeep.identity.schemas import (
    ProfileCreate,
    ProfileOut,
    ProfileUpdate,
    Quota,
    RegionCreate,
    RegionOut,
    RegionUpdate,
    UserCreate,
    UserOut,
    UserUpdate,
)
from fleetkeep.web.deps import CurrentActor, DbSession
from fleetkeep.web.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, next_cursor

router = APIRouter(tags=["identity"])


def _profile_fields(body: ProfileCreate | ProfileUpdate) -> dict[str, Any]:
    fields = body.model_dump(exclude_unset=True, exclude={"default_quota"})
    if body.default_quota is not None:
        fields["default_quota_value"] = body.default_quota.value
        fields["default_quota_unit"] = body.default_quota.unit
    return fields


def profile_out(profile: Profile) -> ProfileOut:
    return ProfileOut(
        id=profile.id,
        name=profile.name,
        description=profile.description,
        login_method=profile.login_method,
        max_devices_per_user=profile.max_devices_per_user,
        backup_interval_minutes=profile.backup_interval_minutes,
        policy=profile.policy,
        default_quota=Quota(value=profile.default_quota_value, unit=profile.default_quota_unit),
        created_at=profile.created_at,
    )


def user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        username=user.username,
        display_name=user.display_name,
        state=user.state,
        preserved_by=user.preserved_by,
        profile_id=user.profile_id,
        storage_region_id=user.storage_region_id,
        quota=Quota(value=user.quota_value, unit=user.quota_unit),
        quota_bytes=user.quota_bytes,
        source=user.source,
        external_id=user.external_id,
        upn=user.upn,
        created_at=user.created_at,
        state_changed_at=user.state_changed_at,
    )


@router.get("/profiles")
def list_profiles(session: DbSession) -> list[ProfileOut]:
    return [profile_out(p) for p in service.list_profiles(session)]


@router.post("/profiles", status_code=status.HTTP_201_CREATED)
def create_profile(body: ProfileCreate, session: DbSession, actor: CurrentActor) -> ProfileOut:
    return profile_out(service.create_profile(session, actor, **_profile_fields(body)))


@router.get("/profiles/{profile_id}")
def get_profile(profile_id: int, session: DbSession) -> ProfileOut:
    return profile_out(service.get_profile(session, profile_id))


@router.patch("/profiles/{profile_id}")
def update_profile(
    profile_id: int, body: ProfileUpdate, session: DbSession, actor: CurrentActor
) -> ProfileOut:
    return profile_out(service.update_profile(session, actor, profile_id, **_profile_fields(body)))


@router.delete("/profiles/{profile_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_profile(profile_id: int, session: DbSession, actor: CurrentActor) -> None:
    service.delete_profile(session, actor, profile_id)


@router.get("/storage-regions")
def list_regions(session: DbSession) -> list[RegionOut]:
    return [RegionOut.model_validate(r) for r in service.list_regions(session)]


@router.post("/storage-regions", status_code=status.HTTP_201_CREATED)
def create_region(body: RegionCreate, session: DbSession, actor: CurrentActor) -> RegionOut:
    return RegionOut.model_validate(service.create_region(session, actor, **body.model_dump()))


@router.get("/storage-regions/{region_id}")
def get_region(region_id: int, session: DbSession) -> RegionOut:
    return RegionOut.model_validate(service.get_region(session, region_id))


@router.patch("/storage-regions/{region_id}")
def update_region(
    region_id: int, body: RegionUpdate, session: DbSession, actor: CurrentActor
) -> RegionOut:
    fields = body.model_dump(exclude_unset=True)
    return RegionOut.model_validate(service.update_region(session, actor, region_id, **fields))


@router.delete("/storage-regions/{region_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_region(region_id: int, session: DbSession, actor: CurrentActor) -> None:
    service.delete_region(session, actor, region_id)


def _user_fields(body: UserCreate | UserUpdate) -> dict[str, Any]:
    fields = body.model_dump(exclude_unset=True, exclude={"quota"})
    if body.quota is not None:
        fields["quota_value"] = body.quota.value
        fields["quota_unit"] = body.quota.unit
    return fields


@router.get("/users")
def list_users(
    session: DbSession,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    state: UserState | None = None,
    profile_id: int | None = None,
    storage_region_id: int | None = None,
    source: str | None = None,
    q: Annotated[str | None, Query(max_length=200, description="text search")] = None,
) -> Page[UserOut]:
    users = service.list_users(
        session,
        after_id=decode_cursor(cursor),
        limit=limit,
        state=state,
        profile_id=profile_id,
        storage_region_id=storage_region_id,
        source=source,
        q=q,
    )
    return Page(
        items=[user_out(u) for u in users], next_cursor=next_cursor([u.id for u in users], limit)
    )


@router.post("/users", status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, session: DbSession, actor: CurrentActor) -> UserOut:
    return user_out(service.create_user(session, actor, **_user_fields(body)))


@router.get("/users/{user_id}")
def get_user(user_id: int, session: DbSession) -> UserOut:
    return user_out(service.get_user(session, user_id))


@router.patch("/users/{user_id}")
def update_user(user_id: int, body: UserUpdate, session: DbSession, actor: CurrentActor) -> UserOut:
    return user_out(service.update_user(session, actor, user_id, **_user_fields(body)))


@router.post("/users/{user_id}/preserve")
def preserve_user(user_id: int, session: DbSession, actor: CurrentActor) -> UserOut:
    return user_out(service.preserve_user(session, actor, user_id))


@router.post("/users/{user_id}/restore")
def restore_user(user_id: int, session: DbSession, actor: CurrentActor) -> UserOut:
    return user_out(service.restore_user(session, actor, user_id))


@router.delete("/users/{user_id}")
def delete_user(user_id: int, session: DbSession, actor: CurrentActor) -> UserOut:
    """Soft delete: the user is purged after the retention period, restorable until then."""
    return user_out(service.delete_user(session, actor, user_id))
