"""Open a user's repository with the store and the organization key alone (database lost).

The repository's ``keys/`` object (``vault.escrow``) holds the wrapped DEK and says which
organization key wrapped it; the key file (local provider, or the connector's file on the
customer side) or AWS KMS unwraps it.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from fleetkeep.backup import Repository
from fleetkeep.backup.stores import FilesystemStore, Store
from fleetkeep.errors import FleetkeepError, InvalidInput, NotFound
from fleetkeep.keys.models import ProviderName
from fleetkeep.keys.providers.awskms import KmsProvider
from fleetkeep.keys.providers.base import KeyProvider
from fleetkeep.keys.providers.local import LocalProvider
from fleetkeep.vault.escrow import EscrowedKey, open_owner, read_escrowed_keys
from fleetkeep.vault.repositories import store_for_url, user_prefix


class RecoveryFailed(FleetkeepError):
    status = 403
    code = "recovery_failed"
    title = "Repository cannot be opened from the store"


def _provider(key: EscrowedKey, kind: ProviderName, key_file: Path | None) -> KeyProvider:
    if kind is ProviderName.AWSKMS:
        return KmsProvider(key.version_info)
    if key_file is None:
        raise InvalidInput(f"--key-provider {kind} needs --key-file", field="key_file")
    # A connector's key file has the local provider's format; only who holds it differs.
    return LocalProvider(key.version_info, key_file)


def unwrap_escrowed_dek(
    store: Store, kind: ProviderName, key_file: Path | None
) -> tuple[EscrowedKey, bytes]:
    """The repository's DEK, unwrapped by the first escrowed copy ``kind`` can open."""
    keys = read_escrowed_keys(store)
    if not keys:
        raise RecoveryFailed(
            "the store holds no escrowed data key (keys/): is this a user's repository?"
        )
    usable = [
        k for k in keys if (k.provider is ProviderName.AWSKMS) == (kind is ProviderName.AWSKMS)
    ]
    if not usable:
        found = ", ".join(sorted({str(k.provider) for k in keys}))
        raise RecoveryFailed(f"the data key was wrapped by {found}, not {kind}")
    errors = []
    for key in usable:
        try:
            return key, _provider(key, kind, key_file).unwrap(key.wrapped, key.context)
        except FleetkeepError as exc:
            errors.append(f"key version {key.key_version}: {exc.detail}")
    raise RecoveryFailed("no escrowed data key unwraps: " + "; ".join(errors))


def _user_folders(url: str) -> list[int]:
    """The user ids with a folder under ``users/`` of the region at ``url``."""
    root = store_for_url(url)
    if isinstance(root, FilesystemStore):
        folder = root.root / "users"
        names = os.listdir(folder) if folder.is_dir() else []
    else:
        from fleetkeep.backup.stores.s3 import S3Store

        assert isinstance(root, S3Store)
        pages = root._s3.get_paginator("list_objects_v2").paginate(
            Bucket=root.bucket, Prefix=root.prefix + "users/", Delimiter="/"
        )
        names = [
            p["Prefix"].rstrip("/").rpartition("/")[2]
            for page in pages
            for p in page.get("CommonPrefixes", [])
        ]
    return sorted(int(n) for n in names if n.isdigit())


def open_recovered_repository(
    url: str,
    kind: ProviderName,
    key_file: Path | None,
    user: str | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[EscrowedKey, Repository]:
    """Open a repository with no database: ``url`` is a user's repository, or a region's
    store with ``user`` (a user id, or an email found by trying each user's escrowed key)."""
    if urlsplit(url).scheme not in ("file", "s3"):
        raise InvalidInput("--from-store must be file:// or s3://", field="from_store")
    direct = store_for_url(url)
    if direct.exists("config"):
        key, dek = unwrap_escrowed_dek(direct, kind, key_file)
        return key, Repository.open(direct, dek, cache_dir=cache_dir)
    if not user:
        raise InvalidInput(
            "the store is a region (no repository at its root): name the user with --user",
            field="user",
        )
    if user.isdigit():
        store = store_for_url(url, user_prefix(int(user)))
        if not store.exists("config"):
            raise NotFound(f"no repository for user id {user} in {url}")
        key, dek = unwrap_escrowed_dek(store, kind, key_file)
        return key, Repository.open(store, dek, cache_dir=cache_dir)
    wanted = user.strip().lower()
    for user_id in _user_folders(url):
        store = store_for_url(url, user_prefix(user_id))
        try:
            key, dek = unwrap_escrowed_dek(store, kind, key_file)
        except RecoveryFailed:
            continue
        owner = open_owner(dek, key.sealed_owner)
        if owner is not None and owner.strip().lower() == wanted:
            return key, Repository.open(store, dek, cache_dir=cache_dir)
    raise NotFound(f"no repository in {url} belongs to {user}", code="user_not_found")
