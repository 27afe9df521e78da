"""The key file: created 0600, refused when others can read it or it is damaged."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from fleetkeep.keys.errors import KeyFileInvalid
from fleetkeep.keys.keyfile import add_key, current_key, ensure_local_key, load_keys


def test_ensure_local_key_creates_a_private_file_once(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "ekey.json"
    first = ensure_local_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ensure_local_key(path).kcv == first.kcv
    assert first.key.hex() not in repr(first)


def test_add_key_keeps_older_keys_and_makes_the_new_one_current(tmp_path: Path) -> None:
    path = tmp_path / "ekey.json"
    old = ensure_local_key(path)
    new = add_key(path)
    assert [k.kcv for k in load_keys(path)] == [old.kcv, new.kcv]
    assert current_key(path).kcv == new.kcv
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ekey.json"
    ensure_local_key(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileInvalid, match="chmod 600"):
        load_keys(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "unreadable"),
        ('{"format": "other"}', "not a fleetkeep-ekey/1 file"),
        ('{"format": "fleetkeep-ekey/1", "keys": []}', "holds no keys"),
        ('{"format": "fleetkeep-ekey/1", "keys": [{"key": "!!"}]}', "not base64"),
        ('{"format": "fleetkeep-ekey/1", "keys": [{"key": "AAAA"}]}', "this one 3"),
    ],
)
def test_damaged_key_files_are_refused_precisely(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "ekey.json"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileInvalid, match=message):
        load_keys(path)


def test_a_key_that_does_not_match_its_check_value_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ekey.json"
    ensure_local_key(path)
    document = json.loads(path.read_text())
    document["keys"][0]["kcv"] = "0" * 16
    path.write_text(json.dumps(document))
    with pytest.raises(KeyFileInvalid, match="damaged file"):
        load_keys(path)
