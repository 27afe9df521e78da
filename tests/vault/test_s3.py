"""The same backup and restore with the user's repository in S3 (moto in server mode), packs
uploaded by the agent straight to S3 on pre-signed URLs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from fleetkeep.backup import Repository
from fleetkeep.backup.stores.s3 import S3Store
from tests.backup.trees import describe
from tests.conftest import create_pg_database, drop_pg_database
from tests.support.servers import ServerProcess, start_server
from tests.vault.agents import (
    assert_nothing_resent,
    make_tree,
    new_agent,
    repository_key,
    setup_org,
)

AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture
def s3_server(database_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    url = (
        f"sqlite:///{tmp_path / 'server' / 'fleetkeep.db'}"
        if database_url.startswith("sqlite")
        else create_pg_database("fk_s3")
    )
    proc = start_server(tmp_path / "server", url, extra_env=AWS, jobs=False)
    yield proc
    proc.stop()
    if not url.startswith("sqlite"):
        drop_pg_database(url)


def test_backup_to_s3_restores_byte_identical_and_checks_clean(
    s3_server: ServerProcess, moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in AWS.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"fk-{os.urandom(4).hex()}"
    s3.create_bucket(Bucket=bucket)
    org = setup_org(s3_server, f"s3://{bucket}/eu?endpoint_url={moto_endpoint}&region=us-east-1")
    user = org.user("ann@example.com")
    ann = new_agent(tmp_path, s3_server, org, "ann@example.com", "ANN-PC")
    make_tree(ann.home)
    ann.ok("backup", "--quiet")
    # Packs went straight to S3 on pre-signed URLs; only index files passed the server.
    log = s3_server.log()
    assert "/direct-uploads/confirm" in log
    assert "/objects/packs/" not in log
    assert_nothing_resent(ann.ok("backup", "--quiet"))
    out = tmp_path / "out"
    ann.ok("restore", "--target", str(out))
    (ann.home / ".cache" / "junk.bin").unlink()
    (ann.home / ".cache").rmdir()
    assert describe(out / ann.home.relative_to("/")) == describe(ann.home)

    store = S3Store(bucket, f"eu/users/{user}", client=s3)
    repo = Repository.open(store, repository_key(s3_server, ann))
    assert repo.check(read_data=True).ok
    assert len(repo.list_snapshots()) == 2
