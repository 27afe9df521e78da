"""Users' repositories: each user has one, under ``users/<user id>/`` of their region's store.

``store_for_region`` turns a region's URL into a library store; ``open_user_repository``
fetches the user's DEK through the keyring and opens (or creates) the repository, keeping a
copy of the wrapped DEK in it (see ``vault.escrow``).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy.orm import Session

from fleetkeep.backup import Repository, RepositoryExists, RepositoryNotFound
from fleetkeep.backup.stores import FilesystemStore, Store
from fleetkeep.errors import InvalidInput, NotFound
from fleetkeep.identity.models import StorageRegion, User
from fleetkeep.keys.models import KeyVersion, WrappedKey
from fleetkeep.keys.service import Keyring, get_user_dek
from fleetkeep.vault.escrow import EscrowedKey, publish_escrowed_key, seal_owner


def user_prefix(user_id: int) -> str:
    return f"users/{user_id}"


def store_for_url(url: str, prefix: str = "") -> Store:
    """A store for ``file:///path`` or ``s3://bucket/prefix`` (optionally
    ``?endpoint_url=…&region=…``; else the usual AWS environment), under ``prefix``."""
    parts = urlsplit(url)
    sub = prefix.strip("/")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidInput(f"file URL with a host: {url}", field="store_url")
        root = Path(unquote(parts.path))
        return FilesystemStore(root / sub if sub else root)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise InvalidInput(f"s3 URL without a bucket: {url}", field="store_url")
        from fleetkeep.backup.stores.s3 import S3Store

        query = parse_qs(parts.query)
        base = unquote(parts.path).strip("/")
        return S3Store(
            parts.netloc,
            "/".join(p for p in (base, sub) if p),
            endpoint_url=query.get("endpoint_url", [None])[0],
            region_name=query.get("region", [None])[0],
        )
    raise InvalidInput(f"store URL must be file:// or s3://, got {url!r}", field="store_url")


def store_for_region(region: StorageRegion, user_id: int | None = None) -> Store:
    """The region's store; with ``user_id``, that user's repository inside it."""
    return store_for_url(region.store_url, user_prefix(user_id) if user_id is not None else "")


def open_user_repository(
    session: Session,
    keyring: Keyring,
    user: User,
    create: bool = False,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Repository:
    """The user's repository, opened with their DEK; ``create`` makes it on first use.

    Raises ``RepositoryNotFound`` when it does not exist and ``create`` is false. A DEK made
    here is flushed in ``session``: the caller must commit before anything is backed up, or
    the data would be sealed with a key the database forgets.
    """
    region = session.get(StorageRegion, user.storage_region_id)
    if region is None:
        raise NotFound(f"storage region {user.storage_region_id} does not exist")
    store = store_for_region(region, user.id)
    dek = get_user_dek(session, keyring, user.id)
    try:
        repo = Repository.open(store, dek, cache_dir=cache_dir)
    except RepositoryNotFound:
        if not create:
            raise
        try:
            repo = Repository.init(store, dek)
        except RepositoryExists:  # another session created it in between
            repo = Repository.open(store, dek, cache_dir=cache_dir)
    escrow_user_key(session, store, user, dek)
    return repo


def escrow_user_key(session: Session, store: Store, user: User, dek: bytes) -> None:
    """Keep the current wrapping of the user's DEK in their repository."""
    row = session.get(WrappedKey, user.id)
    if row is None:
        return
    kv = session.get(KeyVersion, row.key_version)
    publish_escrowed_key(
        store,
        EscrowedKey(
            user_id=user.id,
            key_version=row.key_version,
            provider=row.provider,
            kcv=kv.kcv if kv is not None else "",
            key_ref=kv.key_ref if kv is not None else "",
            wrapped=row.wrapped,
            sealed_owner=seal_owner(dek, user.email),
        ),
    )
