"""The S3 store against moto in server mode on a loopback port: the Store contract and a
full backup → check → restore through it."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest

from fleetkeep.backup import ObjectNotFound, Repository
from fleetkeep.backup.stores import InvalidName
from fleetkeep.backup.stores.s3 import S3Store
from tests.backup.conftest import SMALL_CHUNKS
from tests.backup.trees import describe


@pytest.fixture
def s3_store(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"fk-{os.urandom(4).hex()}"
    client.create_bucket(Bucket=bucket)
    return S3Store(bucket, "users/42", client=client)


def test_store_contract(s3_store: S3Store) -> None:
    s3_store.put("packs/ab/abcd", b"0123456789")
    s3_store.put("index/ff", b"i")
    assert s3_store.get("packs/ab/abcd") == b"0123456789"
    assert s3_store.get_range("packs/ab/abcd", 2, 3) == b"234"
    assert s3_store.get_range("packs/ab/abcd", -4, 4) == b"6789"
    assert s3_store.exists("index/ff")
    assert not s3_store.exists("index/00")
    assert [o.name for o in s3_store.list("packs/")] == ["packs/ab/abcd"]
    assert [o.size for o in s3_store.list("")] == [1, 10]
    s3_store.delete("index/ff")
    s3_store.delete("index/ff")
    with pytest.raises(ObjectNotFound):
        s3_store.get("index/ff")
    with pytest.raises(InvalidName):
        s3_store.put("../escape", b"x")


def test_backup_check_restore_through_s3(s3_store: S3Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "report.txt").write_text("quarterly numbers " * 2000)
    (src / "photo.raw").write_bytes(os.urandom(300_000))
    os.symlink("docs/report.txt", src / "latest")
    dek = os.urandom(32)
    repo = Repository.init(s3_store, dek, chunker=SMALL_CHUNKS, pack_target=128 * 1024)
    snap = repo.backup([src], device="laptop")

    reopened = Repository.open(s3_store, dek)
    assert reopened.check(read_data=True).ok
    reopened.restore(snap.id, tmp_path / "out")
    assert describe(tmp_path / "out" / src.relative_to("/")) == describe(src)
