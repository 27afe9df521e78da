"""``fleetkeep check``: clean repositories pass; damage is named precisely and fails the run."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.orm import Session

from fleetkeep.backup.stores import FilesystemStore
from fleetkeep.identity.models import User
from fleetkeep.keys.service import Keyring
from fleetkeep.settings import Settings
from fleetkeep.vault.repositories import open_user_repository
from tests.support.servers import fleetkeep_env, run_cli
from tests.vault.conftest import make_user


def _backed_up(session: Session, keyring: Keyring, user: User, src: Path) -> FilesystemStore:
    src.mkdir(parents=True)
    (src / "report.txt").write_bytes(b"quarterly numbers " * 5000)
    (src / "photo.raw").write_bytes(os.urandom(300_000))
    repo = open_user_repository(session, keyring, user, create=True)
    session.commit()
    repo.backup([src], device="laptop")
    assert isinstance(repo.store, FilesystemStore)
    return repo.store


def test_clean_repositories_pass_and_users_without_one_are_listed(
    session: Session,
    keyring: Keyring,
    settings: Settings,
    database_url: str,
    user: User,
    blobs: Path,
    tmp_path: Path,
) -> None:
    _backed_up(session, keyring, user, tmp_path / "src")
    make_user(session, blobs, "new@example.com")
    env = fleetkeep_env(settings.data_dir, database_url)
    result = run_cli(["check", "--all", "--read-data"], env)
    assert f"{user.email}: ok" in result.stdout
    assert "new@example.com: no repository yet" in result.stdout
    assert run_cli(["check"], env, check=False).returncode == 2


def test_a_damaged_pack_fails_the_check_naming_snapshot_path_and_pack(
    session: Session,
    keyring: Keyring,
    settings: Settings,
    database_url: str,
    user: User,
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    store = _backed_up(session, keyring, user, src)
    pack = max(store.list("packs/"), key=lambda o: o.size).name  # the data pack
    path = store.root / pack
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # inside its first blob
    path.write_bytes(bytes(data))
    env = fleetkeep_env(settings.data_dir, database_url)

    # Structure alone cannot see a flipped byte; reading the data does.
    assert run_cli(["check", "--user", user.email], env).returncode == 0
    result = run_cli(["check", "--user", user.email, "--read-data"], env, check=False)
    assert result.returncode == 1
    assert "bad_blob" in result.stdout
    assert f"pack={pack.rpartition('/')[2]} blob=" in result.stdout

    path.unlink()
    result = run_cli(["check", "--user", str(user.id)], env, check=False)
    assert result.returncode == 1
    assert "missing_pack" in result.stdout
    assert f"path={src}/" in result.stdout
    assert "1 repository damaged" in result.stderr
