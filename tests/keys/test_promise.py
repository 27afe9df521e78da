"""The promise of seed 003, end to end through a real backup of known content.

The server holds only wrapped DEKs; the customer's key connector holds the ekey. After
backups, neither the database nor the blob store holds the ekey, a DEK, a sub-key or the
backed-up plaintext; with the connector gone, the database and the store decrypt nothing,
backups fail cleanly, and the connector's return heals everything.

The backups go through ``vault.open_user_repository`` and the backup library in this process
(the device upload API is not needed to prove what is stored). The connector runs in-process
on its own event loop with the real connector's request handling (``Connector.answer``); the
process-level connector (WebSocket, SIGKILL, reconnect) is in ``test_connector_e2e``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.audit.service import SYSTEM
from fleetkeep.backup import Repository, WrongKey
from fleetkeep.backup.stores import FilesystemStore
from fleetkeep.connector.client import Connector
from fleetkeep.db import utcnow
from fleetkeep.identity import service as identity
from fleetkeep.identity.models import User
from fleetkeep.keys.errors import KeyProviderNotConnected
from fleetkeep.keys.hub import ConnectorHub, ConnectorLink
from fleetkeep.keys.keyfile import Ekey, ensure_local_key, load_keys
from fleetkeep.keys.models import ProviderName, WrappedKey
from fleetkeep.keys.service import Keyring, get_user_dek, rotate_keys, user_context
from fleetkeep.keys.subkeys import derive_subkeys
from fleetkeep.keys.wrapping import UnwrapFailed, unwrap_dek
from fleetkeep.settings import Settings
from fleetkeep.vault.escrow import read_escrowed_keys
from fleetkeep.vault.repositories import open_user_repository, store_for_url, user_prefix
from tests.keys.scanning import database_bytes, find_secrets


@dataclass
class InProcessConnector:
    """A key connector holding the customer's ekey, linked to a hub on its own event loop."""

    hub: ConnectorHub
    key: Ekey
    loop: asyncio.AbstractEventLoop
    link: ConnectorLink | None = None

    def connect(self) -> None:
        connector = Connector("ws://in-process", "", {self.key.kcv: self.key}, self.key.kcv)

        async def send(message: dict[str, Any]) -> None:
            answer = connector.answer(message)
            asyncio.get_running_loop().call_soon(self.hub.deliver, link, answer)

        link = ConnectorLink(
            1, "customer-dc", "test", frozenset({self.key.kcv}), self.key.kcv, utcnow(), send
        )

        async def attach() -> None:
            self.hub.attach(link)

        asyncio.run_coroutine_threadsafe(attach(), self.loop).result(5)
        self.link = link

    def stop(self) -> None:
        link, self.link = self.link, None
        assert link is not None

        async def detach() -> None:
            self.hub.detach(link)

        asyncio.run_coroutine_threadsafe(detach(), self.loop).result(5)


@pytest.fixture
def connector(tmp_path: Path) -> Iterator[InProcessConnector]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    key = ensure_local_key(tmp_path / "customer" / "ekey.json")
    found = InProcessConnector(ConnectorHub(timeout=5), key, loop)
    found.connect()
    yield found
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def _users(session: Session, store_url: str, count: int) -> list[User]:
    profile = identity.create_profile(session, SYSTEM, name="promise")
    region = identity.create_region(session, SYSTEM, name="promise", store_url=store_url)
    users = [
        identity.create_user(
            session,
            SYSTEM,
            email=f"promise{i}@example.com",
            profile_id=profile.id,
            storage_region_id=region.id,
        )
        for i in range(count)
    ]
    session.commit()
    return users


def _known_content(root: Path, owner: str) -> dict[str, bytes]:
    """Files whose content (and name) must appear nowhere in clear; returns the probes."""
    root.mkdir(parents=True)
    probes = {}
    for i in range(3):
        body = f"{owner} quarterly figures {i}: ".encode() + os.urandom(12_000).hex().encode()
        (root / f"{owner}-confidential-{i}.txt").write_bytes(body)
        probes[f"plaintext of {owner} file {i}"] = body[:64]
        probes[f"plaintext tail of {owner} file {i}"] = body[-64:]
    probes[f"file name of {owner}"] = f"{owner}-confidential-1.txt".encode()
    return probes


def _store_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_a_backup_leaves_no_key_and_no_plaintext_and_without_the_connector_nothing_opens(
    settings: Settings,
    factory: sessionmaker[Session],
    connector: InProcessConnector,
    database_url: str,
    tmp_path: Path,
) -> None:
    store_root = tmp_path / "blob-store"
    keyring = Keyring(settings, factory, connector.hub)
    with factory() as session:
        users = _users(session, store_root.as_uri(), 3)
        rotate_keys(factory, keyring, SYSTEM, provider=ProviderName.CONNECTOR)
        secrets: dict[str, bytes] = {}
        snapshots = {}
        for user in users[:2]:
            repo = open_user_repository(session, keyring, user, create=True)
            session.commit()
            source = tmp_path / "devices" / f"user{user.id}"
            secrets.update(_known_content(source, f"user{user.id}"))
            snapshots[user.id] = (source, repo.backup([source], device=f"pc-{user.id}").id)
            dek = get_user_dek(session, keyring, user.id)
            subkeys = derive_subkeys(dek)
            secrets[f"dek of user {user.id}"] = dek
            secrets[f"chunk-id key of user {user.id}"] = subkeys.chunk_id
            secrets[f"data key of user {user.id}"] = subkeys.data
            secrets[f"metadata key of user {user.id}"] = subkeys.metadata
        session.commit()
    server_ekeys = {f"server ekey {k.kcv}": k.key for k in load_keys(settings.resolved_key_file)}
    secrets.update(server_ekeys)
    secrets["customer ekey"] = connector.key.key

    # (a) the ekeys, (b) DEKs and sub-keys, (c) plaintext: none in the database or the store.
    assert find_secrets(database_bytes(database_url), secrets) == []
    stored = _store_bytes(store_root)
    assert len(stored) > 30_000, "the backups should have written packs"
    assert find_secrets(stored, secrets) == []
    # The scan can fail: a file copied into the store in clear is found.
    leaked = store_root / "leaked.txt"
    leaked.write_bytes(
        (tmp_path / "devices" / f"user{users[0].id}")
        .joinpath(f"user{users[0].id}-confidential-0.txt")
        .read_bytes()
    )
    assert find_secrets(_store_bytes(store_root), secrets)
    leaked.unlink()

    # The connector stops. A fresh server process with only the database and the store: no
    # connector on its hub, so no DEK, so nothing opens.
    connector.stop()
    assert len(keyring.cache) == 0, "the last connector leaving wipes the cached DEKs"
    fresh = Keyring(settings, factory, ConnectorHub(timeout=1))
    with factory() as session:
        for user in users[:2]:
            with pytest.raises(KeyProviderNotConnected):
                open_user_repository(session, fresh, session.get(User, user.id))  # type: ignore[arg-type]
            store = FilesystemStore(store_root / user_prefix(user.id))
            # The escrowed copy in the store is wrapped too: the server's own key file does
            # not open it, nor does the database's copy.
            escrowed = read_escrowed_keys(store)
            assert escrowed
            row = session.get(WrappedKey, user.id)
            assert row is not None
            for wrapped in [e.wrapped for e in escrowed] + [row.wrapped]:
                for ekey in server_ekeys.values():
                    with pytest.raises(UnwrapFailed):
                        unwrap_dek(ekey, wrapped, user_context(user.id))
            with pytest.raises(WrongKey):
                Repository.open(store, os.urandom(32))

        # A backup started meanwhile fails cleanly before anything is written.
        newcomer = session.get(User, users[2].id)
        assert newcomer is not None
        with pytest.raises(KeyProviderNotConnected, match="no key connector"):
            open_user_repository(session, keyring, newcomer, create=True)
        session.rollback()
        assert session.scalar(select(WrappedKey).where(WrappedKey.user_id == newcomer.id)) is None
        assert not list(store_for_url(store_root.as_uri(), user_prefix(newcomer.id)).list(""))

    # The connector comes back: the same server heals, and every file restores unchanged.
    connector.connect()
    with factory() as session:
        for user in users[:2]:
            repo = open_user_repository(session, keyring, session.get(User, user.id))  # type: ignore[arg-type]
            source, snapshot_id = snapshots[user.id]
            target = tmp_path / "restored" / str(user.id)
            repo.restore(snapshot_id, target)
            for original in source.iterdir():
                restored = next(target.rglob(original.name))
                assert restored.read_bytes() == original.read_bytes()
        assert open_user_repository(session, keyring, newcomer, create=True)  # type: ignore[arg-type]
        session.commit()
