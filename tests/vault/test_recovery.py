"""Restore with the store and the organization key alone, the database lost."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import boto3
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from fleetkeep.audit.service import SYSTEM
from fleetkeep.identity import service as identity
from fleetkeep.identity.models import User
from fleetkeep.keys.service import Keyring
from fleetkeep.settings import Settings
from fleetkeep.vault.repositories import open_user_repository
from tests.backup.trees import describe
from tests.support.servers import fleetkeep_env, run_cli
from tests.vault.conftest import make_user
from tests.vault.test_s3 import AWS

# Nothing listens here: a command that touched the database would fail.
NO_DATABASE = "postgresql+psycopg://nobody@127.0.0.1:9/lost"


def _tree(root: Path, seed: int) -> Path:
    rng = random.Random(seed)
    (root / "docs" / "ünïcode").mkdir(parents=True)
    for i in range(12):
        (root / "docs" / f"f{i}.txt").write_bytes(rng.randbytes(rng.choice([0, 700, 90_000])))
    (root / "docs" / "ünïcode" / "note.md").write_text("hello\n")
    (root / "docs" / "link").symlink_to("f1.txt")
    return root


def _lose_database(engine: Engine) -> None:
    from fleetkeep.db import Base

    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


def _saved_key_file(settings: Settings, tmp_path: Path) -> Path:
    kept = tmp_path / "kept-ekey.json"
    shutil.copy2(settings.resolved_key_file, kept)
    kept.chmod(0o600)
    return kept


def test_restore_by_email_from_the_region_store_and_key_file_without_database(
    session: Session,
    keyring: Keyring,
    settings: Settings,
    clean_engine: Engine,
    blobs: Path,
    tmp_path: Path,
) -> None:
    ann = make_user(session, blobs, "ann@example.com")
    bob = make_user(session, blobs, "bob@example.com")
    src = _tree(tmp_path / "src", 1)
    for user, device in ((ann, "laptop"), (bob, "desktop")):
        repo = open_user_repository(session, keyring, user, create=True)
        session.commit()
        repo.backup([src], device=device)
    (src / "docs" / "f0.txt").write_bytes(b"changed after the backup")
    key_file = _saved_key_file(settings, tmp_path)
    _lose_database(clean_engine)

    env = fleetkeep_env(tmp_path / "new-data", NO_DATABASE)
    listed = run_cli(
        ["restore", "--from-store", f"file://{blobs}", "--key-file", str(key_file),
         "--user", "ANN@example.com", "--list"],
        env,
    )  # fmt: skip
    assert "laptop" in listed.stdout
    out = tmp_path / "out"
    done = run_cli(
        ["restore", "--from-store", f"file://{blobs}", "--key-provider", "local",
         "--key-file", str(key_file), "--user", "ann@example.com", "--target", str(out)],
        env,
    )  # fmt: skip
    assert "device laptop" in done.stdout
    restored = describe(out / src.relative_to("/"))
    original = describe(src)
    assert restored.pop("docs/f0.txt") != original.pop("docs/f0.txt")
    assert restored == original


def test_restore_of_one_path_by_user_id_and_repository_url(
    session: Session,
    keyring: Keyring,
    settings: Settings,
    clean_engine: Engine,
    user: User,
    blobs: Path,
    tmp_path: Path,
) -> None:
    repo = open_user_repository(session, keyring, user, create=True)
    session.commit()
    src = _tree(tmp_path / "src", 2)
    snap = repo.backup([src], device="laptop")
    key_file = _saved_key_file(settings, tmp_path)
    _lose_database(clean_engine)
    env = fleetkeep_env(tmp_path / "new-data", NO_DATABASE)

    by_id = tmp_path / "by-id"
    run_cli(
        ["restore", "--from-store", f"file://{blobs}", "--key-file", str(key_file),
         "--user", str(user.id), "--snapshot", snap.id[:8],
         "--path", str(src / "docs" / "ünïcode"), "--target", str(by_id)],
        env,
    )  # fmt: skip
    docs = by_id / src.relative_to("/") / "docs"
    assert [p.name for p in docs.iterdir()] == ["ünïcode"]
    assert (docs / "ünïcode" / "note.md").read_text() == "hello\n"

    direct = tmp_path / "direct"
    run_cli(
        ["restore", "--from-store", f"file://{blobs}/users/{user.id}",
         "--key-file", str(key_file), "--target", str(direct)],
        env,
    )  # fmt: skip
    assert describe(direct / src.relative_to("/")) == describe(src)


def test_restore_with_another_organization_key_fails_clearly(
    session: Session,
    keyring: Keyring,
    clean_engine: Engine,
    user: User,
    blobs: Path,
    tmp_path: Path,
) -> None:
    from fleetkeep.keys.keyfile import ensure_local_key

    repo = open_user_repository(session, keyring, user, create=True)
    session.commit()
    repo.backup([_tree(tmp_path / "src", 3)], device="laptop")
    other = tmp_path / "other" / "ekey.json"
    ensure_local_key(other)
    env = fleetkeep_env(tmp_path / "new-data", NO_DATABASE)
    result = run_cli(
        ["restore", "--from-store", f"file://{blobs}", "--key-file", str(other),
         "--user", str(user.id), "--target", str(tmp_path / "out")],
        env,
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "no escrowed data key unwraps" in result.stderr
    assert not (tmp_path / "out").exists()


def test_restore_by_email_from_an_s3_region_without_database(
    session: Session,
    keyring: Keyring,
    settings: Settings,
    clean_engine: Engine,
    moto_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in AWS.items():
        monkeypatch.setenv(key, value)
    bucket = f"fk-{os.urandom(4).hex()}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    url = f"s3://{bucket}/eu?endpoint_url={moto_endpoint}&region=us-east-1"
    profile = identity.create_profile(session, SYSTEM, name="staff")
    region = identity.create_region(session, SYSTEM, name="eu", store_url=url)
    src = _tree(tmp_path / "src", 4)
    for email in ("ann@example.com", "bob@example.com"):
        user = identity.create_user(
            session, SYSTEM, email=email, profile_id=profile.id, storage_region_id=region.id
        )
        repo = open_user_repository(session, keyring, user, create=True)
        session.commit()
        repo.backup([src], device=email.partition("@")[0])
    key_file = _saved_key_file(settings, tmp_path)
    _lose_database(clean_engine)

    out = tmp_path / "out"
    done = run_cli(
        ["restore", "--from-store", url, "--key-file", str(key_file),
         "--user", "bob@example.com", "--target", str(out)],
        fleetkeep_env(tmp_path / "new-data", NO_DATABASE, **AWS),
    )  # fmt: skip
    assert "device bob" in done.stdout
    assert describe(out / src.relative_to("/")) == describe(src)
