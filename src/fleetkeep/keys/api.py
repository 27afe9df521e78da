"""``/api/v1/keys``: key status, rotation, per-user key checks and connector tokens."""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import APIRouter, Depends, Request, status

from fleetkeep.admins.service import Principal
from fleetkeep.keys import service
from fleetkeep.keys.hub import process_hub
from fleetkeep.keys.schemas import (
    ConnectorTokenCreate,
    ConnectorTokenCreated,
    ConnectorTokenOut,
    KeyStatusOut,
    RotateIn,
    RotationOut,
    UserKeyOut,
)
from fleetkeep.keys.service import Keyring
from fleetkeep.web.deps import CurrentActor, DbSession, owner_only

router = APIRouter(prefix="/keys", tags=["keys"])
_keyring_lock = threading.Lock()


def app_keyring(request: Request) -> Keyring:
    """The app's keyring, made on first use (it shares the process's connector hub)."""
    state = request.app.state
    with _keyring_lock:
        if getattr(state, "keyring", None) is None:
            state.keyring = Keyring(state.settings, state.sessionmaker, process_hub())
    keyring: Keyring = state.keyring
    return keyring


AppKeyring = Annotated[Keyring, Depends(app_keyring)]
Owner = Annotated[Principal, Depends(owner_only)]


@router.get("/status")
def key_status(session: DbSession, keyring: AppKeyring) -> KeyStatusOut:
    return KeyStatusOut.model_validate(service.key_status(session, keyring))


@router.post("/rotate")
def rotate(
    body: RotateIn, request: Request, actor: CurrentActor, keyring: AppKeyring, _owner: Owner
) -> RotationOut:
    report = service.rotate_keys(
        request.app.state.sessionmaker,
        keyring,
        actor,
        provider=body.provider,
        kms_key_arn=body.kms_key_arn,
    )
    return RotationOut.model_validate(report)


@router.post("/users/{user_id}/verify")
def verify_user_key(user_id: int, session: DbSession, keyring: AppKeyring) -> UserKeyOut:
    """Unwrap the user's data key (creating it on first use) and report on it, never the key."""
    return UserKeyOut.model_validate(service.verify_user_key(session, keyring, user_id))


@router.get("/connector-tokens")
def list_connector_tokens(session: DbSession) -> list[ConnectorTokenOut]:
    return [ConnectorTokenOut.model_validate(t) for t in service.list_connector_tokens(session)]


@router.post("/connector-tokens", status_code=status.HTTP_201_CREATED)
def create_connector_token(
    body: ConnectorTokenCreate, session: DbSession, actor: CurrentActor, _owner: Owner
) -> ConnectorTokenCreated:
    plain, row = service.create_connector_token(session, actor, body.label)
    return ConnectorTokenCreated.model_validate({**_fields(row), "token": plain})


@router.delete("/connector-tokens/{token_id}")
def revoke_connector_token(
    token_id: int, session: DbSession, actor: CurrentActor, _owner: Owner
) -> ConnectorTokenOut:
    return ConnectorTokenOut.model_validate(
        service.revoke_connector_token(session, actor, token_id)
    )


def _fields(row: object) -> dict[str, object]:
    return ConnectorTokenOut.model_validate(row).model_dump()
