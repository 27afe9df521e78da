"""Users' repositories in their region's store, and the wrapped DEK kept inside them."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from fleetkeep.backup import RepositoryNotFound
from fleetkeep.backup.stores import FilesystemStore
from fleetkeep.backup.stores.s3 import S3Store
from fleetkeep.errors import InvalidInput
from fleetkeep.identity.models import StorageRegion, User
from fleetkeep.keys.models import WrappedKey
from fleetkeep.keys.service import Keyring, get_user_dek
from fleetkeep.vault.escrow import open_owner, read_escrowed_keys
from fleetkeep.vault.repositories import (
    open_user_repository,
    store_for_region,
    store_for_url,
)


def test_file_region_store_is_per_user(tmp_path: Path) -> None:
    region = StorageRegion(name="r", store_url=f"file://{tmp_path}/blobs")
    store = store_for_region(region, 42)
    assert isinstance(store, FilesystemStore)
    assert store.root == tmp_path / "blobs" / "users" / "42"
    assert store_for_region(region).root == tmp_path / "blobs"  # type: ignore[attr-defined]


def test_s3_region_store_is_per_user_under_the_url_prefix() -> None:
    region = StorageRegion(
        name="r",
        store_url="s3://bucket/fleet/eu?endpoint_url=http://127.0.0.1:9&region=eu-west-1",
    )
    store = store_for_region(region, 7)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == ("bucket", "fleet/eu/users/7/")


@pytest.mark.parametrize("url", ["http://x/y", "s3:///nobucket", "file://host/path"])
def test_unusable_store_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput):
        store_for_url(url)


def test_missing_repository_is_not_created_unless_asked(
    session: Session, keyring: Keyring, user: User
) -> None:
    with pytest.raises(RepositoryNotFound):
        open_user_repository(session, keyring, user)


def test_created_repository_opens_again_and_escrows_the_wrapped_dek(
    session: Session, keyring: Keyring, user: User, blobs: Path
) -> None:
    repo = open_user_repository(session, keyring, user, create=True)
    session.commit()
    again = open_user_repository(session, keyring, user)
    assert again.config.repository_id == repo.config.repository_id
    assert (blobs / "users" / str(user.id) / "config").is_file()

    escrowed = read_escrowed_keys(repo.store)
    row = session.get(WrappedKey, user.id)
    assert row is not None
    assert [k.wrapped for k in escrowed] == [row.wrapped]
    dek = get_user_dek(session, keyring, user.id)
    assert dek not in (blobs / "users" / str(user.id) / escrowed[0].name).read_bytes()
    assert open_owner(dek, escrowed[0].sealed_owner) == user.email
    assert open_owner(bytes(32), escrowed[0].sealed_owner) is None
