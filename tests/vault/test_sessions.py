"""Backup sessions through the app in-process: what the server accepts, counts and commits.

The agent's side is the real one (``RemoteStore`` running the library's backup), talking to
the app through a test client instead of a socket.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import blake3
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.agent.client import DeviceClient, ServerRefused
from fleetkeep.agent.remote import Backoff, RemoteStore, VaultApi
from fleetkeep.alerts.models import Alert, AlertStatus
from fleetkeep.backup import Repository
from fleetkeep.backup.stores import FilesystemStore
from fleetkeep.keys.service import Keyring, get_user_dek
from fleetkeep.vault.maintenance import apply_retention
from fleetkeep.vault.models import BackupSession, SessionState, SnapshotRecord, StorageUsage
from fleetkeep.vault.sessions import expire_stale_sessions
from tests.backup.conftest import SMALL_CHUNKS, SMALL_PACKS
from tests.backup.trees import describe

NO_RETRY = Backoff(attempts=1)


@dataclass
class Device:
    user_id: int
    device_id: int
    token: str
    api: VaultApi
    store: FilesystemStore  # the user's repository, as the server stores it

    def begin(self) -> tuple[int, bytes]:
        begun = self.api.begin()
        return int(begun["session_id"]), base64.b64decode(begun["dek"])

    def backup(self, src: Path) -> tuple[RemoteStore, Any]:
        session_id, dek = self.begin()
        remote = RemoteStore(self.api, session_id)
        snap = Repository.open(remote, dek).backup([src], device="1")
        return remote, snap


@pytest.fixture
def device(
    owner: TestClient,
    tmp_path: Path,
    factory: sessionmaker[Session],
    keyring: Keyring,
) -> Iterator[Device]:
    """A user with a small-pack repository and an activated device talking to the app."""
    profile = owner.post("/api/v1/profiles", json={"name": "Laptops"}).json()["id"]
    region = owner.post(
        "/api/v1/storage-regions", json={"name": "r", "store_url": f"file://{tmp_path}/blobs"}
    ).json()["id"]
    user = owner.post(
        "/api/v1/users",
        json={"email": "ann@example.com", "profile_id": profile, "storage_region_id": region},
    ).json()["id"]
    token = owner.post("/api/v1/deployment-tokens", json={"label": "t"}).json()["token"]
    done = owner.post(
        "/device/v1/activations",
        json={"token": token, "email": "ann@example.com", "platform": "linux", "hostname": "PC"},
    )
    assert done.status_code == 201, done.text
    store = FilesystemStore(tmp_path / "blobs" / "users" / str(user))
    with factory() as session:
        dek = get_user_dek(session, keyring, user)
        session.commit()
    Repository.init(store, dek, chunker=SMALL_CHUNKS, pack_target=SMALL_PACKS)
    client = DeviceClient("http://testserver", done.json()["device_token"])
    client.http.close()
    client.http = TestClient(  # type: ignore[assignment]
        owner.app, headers={"Authorization": f"Bearer {done.json()['device_token']}"}
    )
    activated = done.json()
    api = VaultApi(client, NO_RETRY)
    yield Device(user, activated["device_id"], activated["device_token"], api, store)
    client.http.close()


def tree(root: Path, mb: int = 1) -> Path:
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("text " * 20000)
    (root / "docs" / "b.bin").write_bytes(os.urandom(mb * 1024 * 1024))
    os.symlink("a.txt", root / "docs" / "link")
    return root


def _refusal(call: Any) -> ServerRefused:
    with pytest.raises(ServerRefused) as caught:
        call()
    return caught.value


def test_backup_through_the_session_api_restores_byte_identical(
    device: Device, tmp_path: Path, factory: sessionmaker[Session]
) -> None:
    src = tree(tmp_path / "src")
    remote, snap = device.backup(src)
    assert remote.committed is not None
    assert remote.committed["snapshot_id"] == snap.id
    assert remote.uploaded > 4  # several small packs and an index file
    with factory() as session:
        record = session.scalar(select(SnapshotRecord))
        assert record is not None
        assert record.snapshot_id == snap.id
        # ids are not 1 on PostgreSQL: sequences keep counting across tests
        assert (record.file_count, record.device_id) == (2, device.device_id)
        usage = session.get(StorageUsage, device.user_id)
        on_disk = sum(o.size for o in device.store.list("") if o.name != "config")
        assert usage is not None
        assert usage.stored_bytes == on_disk
    Repository.open(RemoteStore(device.api), device.begin()[1]).restore(snap.id, tmp_path / "out")
    assert describe(tmp_path / "out" / src.relative_to("/")) == describe(src)


def test_an_upload_must_match_its_name_and_stay_in_the_data_folders(device: Device) -> None:
    session_id, _ = device.begin()
    data = os.urandom(1000)
    digest = blake3.blake3(data).hexdigest()
    wrong = _refusal(lambda: device.api.upload(session_id, f"index/{'0' * 64}", data))
    assert (wrong.status, wrong.code) == (422, "object_rejected")
    for name in ("config", f"keys/{digest}", f"pending/{digest}", f"packs/zz/{digest}"):
        refused = _refusal(lambda n=name: device.api.upload(session_id, n, data))
        assert refused.code in ("object_rejected", "not_found"), (name, refused.code)
    assert device.api.upload(session_id, f"packs/{digest[:2]}/{digest}", data) is True
    # A retry (or a pack an interrupted session left) is not stored or counted twice.
    assert device.api.upload(session_id, f"packs/{digest[:2]}/{digest}", data) is False
    too_big = os.urandom(64 * 1024 * 1024 + 1)
    name = blake3.blake3(too_big).hexdigest()
    refused = _refusal(lambda: device.api.upload(session_id, f"index/{name}", too_big))
    assert refused.status == 413


def test_a_snapshot_the_users_key_does_not_open_is_refused(device: Device) -> None:
    session_id, _ = device.begin()
    forged = os.urandom(300)
    refused = _refusal(
        lambda: device.api.commit(session_id, blake3.blake3(forged).hexdigest(), forged)
    )
    assert refused.code == "object_rejected"
    assert not list(device.store.list("snapshots/"))


def test_an_interrupted_session_leaves_no_snapshot_and_the_next_reuses_its_packs(
    device: Device, tmp_path: Path, factory: sessionmaker[Session]
) -> None:
    src = tree(tmp_path / "src", mb=2)
    session_id, dek = device.begin()

    class CutBeforeCommit(RemoteStore):
        def put(self, name: str, data: bytes | bytearray) -> None:
            if name.startswith("snapshots/"):
                raise ConnectionError("network cut")
            super().put(name, data)

    cut = CutBeforeCommit(device.api, session_id)
    with pytest.raises(ConnectionError):
        Repository.open(cut, dek).backup([src], device="1")
    assert cut.uploaded_bytes > 2 * 1024 * 1024
    assert not list(device.store.list("snapshots/"))
    remote, _ = device.backup(src)
    # Only the index of adopted packs, a tree pack and the new index: no file data again.
    assert remote.uploaded_bytes < 100_000, remote.uploaded_bytes
    with factory() as session:
        states = [
            s.state for s in session.scalars(select(BackupSession).order_by(BackupSession.id))
        ]
        assert states == [SessionState.ABANDONED, SessionState.COMMITTED]
        assert len(list(session.scalars(select(SnapshotRecord)))) == 1
    # The abandoned session is closed: nothing more can be added to it.
    late = _refusal(lambda: device.api.upload(session_id, "index/" + "a" * 64, b"x"))
    assert late.code == "backup_session_closed"


def test_over_quota_the_backup_fails_with_an_alert_and_commits_nothing(
    device: Device, owner: TestClient, tmp_path: Path, factory: sessionmaker[Session]
) -> None:
    assert (
        owner.patch(
            f"/api/v1/users/{device.user_id}", json={"quota": {"value": 1, "unit": "MB"}}
        ).status_code
        == 200
    )
    src = tree(tmp_path / "src", mb=2)
    with pytest.raises(ServerRefused) as caught:
        device.backup(src)
    assert (caught.value.status, caught.value.code) == (403, "quota_exceeded")
    assert not list(device.store.list("snapshots/"))
    with factory() as session:
        assert not list(session.scalars(select(SnapshotRecord)))
        usage = session.get(StorageUsage, device.user_id)
        assert usage is not None
        assert usage.stored_bytes <= 1024 * 1024
        [failed] = session.scalars(select(BackupSession))
        assert (failed.state, failed.error_code) == (SessionState.FAILED, "quota_exceeded")
        [alert] = session.scalars(select(Alert).where(Alert.type == "quota_exceeded"))
        assert alert.status is AlertStatus.OPEN
        assert "ann@example.com" in alert.message
    # Filled to the brim: even beginning is refused now.
    with factory() as session:
        row = session.get(StorageUsage, device.user_id)
        assert row is not None
        row.stored_bytes = 1024 * 1024
        session.commit()
    assert _refusal(device.begin).code == "quota_exceeded"
    # More quota: the backup completes and the alert resolves.
    owner.patch(f"/api/v1/users/{device.user_id}", json={"quota": {"value": 1, "unit": "GB"}})
    device.backup(src)
    with factory() as session:
        [alert] = session.scalars(select(Alert).where(Alert.type == "quota_exceeded"))
        assert alert.status is AlertStatus.RESOLVED


def test_retention_drops_forgotten_snapshots_from_the_catalogue_and_recounts_usage(
    device: Device,
    owner: TestClient,
    tmp_path: Path,
    factory: sessionmaker[Session],
    keyring: Keyring,
) -> None:
    src = tree(tmp_path / "src")
    device.backup(src)
    (src / "docs" / "b.bin").write_bytes(os.urandom(500_000))
    _, latest = device.backup(src)
    profile = owner.get(f"/api/v1/users/{device.user_id}").json()["profile_id"]
    keep_latest = {"retention": {"daily": 0, "weekly": 0, "monthly": 0}}
    assert owner.patch(f"/api/v1/profiles/{profile}", json={"policy": keep_latest}).is_success
    result = apply_retention(factory, keyring, device.user_id, grace=timedelta(0))
    assert result is not None
    assert len(result.forgotten) == 1
    with factory() as session:
        [kept] = session.scalars(select(SnapshotRecord))
        assert kept.snapshot_id == latest.id
        usage = session.get(StorageUsage, device.user_id)
        assert usage is not None
        assert usage.stored_bytes == sum(o.size for o in device.store.list(""))


def test_a_session_whose_agent_went_silent_for_a_day_is_abandoned(
    device: Device, factory: sessionmaker[Session]
) -> None:
    quiet, _ = device.begin()
    with factory() as session:
        row = session.get_one(BackupSession, quiet)
        row.last_activity_at -= timedelta(hours=25)
        session.commit()
        assert expire_stale_sessions(session) == 1
        session.commit()
        assert session.get_one(BackupSession, quiet).state is SessionState.ABANDONED
