"""``/api/v1/scim``: the SCIM bearer token and the SCIM mappings, for admins."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from fleetkeep.directories import service as directories
from fleetkeep.directories.scim import service
from fleetkeep.directories.scim.models import ScimToken
from fleetkeep.directories.scim.schemas import MappingCreate, TokenCreate, TokenOut
from fleetkeep.errors import NotFound
from fleetkeep.identity import service as identity
from fleetkeep.web.deps import AppSettings, CurrentActor, DbSession

router = APIRouter(prefix="/scim", tags=["scim"])


def _token_out(token: ScimToken, base: str, plain: str | None = None) -> TokenOut:
    return TokenOut(
        token=plain,
        prefix=token.prefix,
        created_at=token.created_at,
        expires_at=token.expires_at,
        created_by=token.created_by,
        scim_base_url=base.rstrip("/") + "/scim/v2",
    )


@router.post("/token", status_code=status.HTTP_201_CREATED)
def create_token(
    body: TokenCreate, session: DbSession, actor: CurrentActor, settings: AppSettings
) -> TokenOut:
    plain, token = service.create_token(session, actor, days=body.days, regenerate=body.regenerate)
    return _token_out(token, settings.public_url, plain)


@router.get("/token")
def get_token(session: DbSession, settings: AppSettings) -> TokenOut:
    token = service.active_token(session)
    if token is None:
        raise NotFound("no valid SCIM token; create one", code="no_scim_token")
    return _token_out(token, settings.public_url)


@router.get("/mappings")
def list_mappings(session: DbSession) -> list[dict[str, Any]]:
    return [directories.mapping_view(m) for m in service.list_mappings(session)]


@router.post("/mappings", status_code=status.HTTP_201_CREATED)
def add_mapping(body: MappingCreate, session: DbSession, actor: CurrentActor) -> dict[str, Any]:
    """Adds an import mapping to the SCIM directory (made on first use); edit and delete it
    with the generic ``/directories/{id}/mappings`` routes."""
    mapping = service.add_mapping(
        session,
        actor,
        rule=body.rule,
        profile_id=identity.find_profile(session, body.profile).id,
        storage_region_id=identity.find_region(session, body.region).id,
        quota=identity.parse_quota(body.quota) if body.quota is not None else None,
        priority=body.priority,
        name=body.name,
    )
    return directories.mapping_view(mapping)
