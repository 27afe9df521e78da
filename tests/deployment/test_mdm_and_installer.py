"""Mobile managed configuration and desktop silent-install commands, and that the agent reads
exactly what they produce."""

from __future__ import annotations

import json
import plistlib
import shlex
from pathlib import Path
from xml.etree import ElementTree

import pytest
from typer.testing import CliRunner

from fleetkeep.agent.config import ConfigError, read_managed_config
from fleetkeep.cli import app
from fleetkeep.deployment.mobile import KEYS

TOKEN = "fkt_example-token_0123456789"
SERVER = "https://backup.example.com"
ANDROID = "{http://schemas.android.com/apk/res/android}"


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def mobile(fmt: str, *extra: str) -> str:
    return cli(
        "deploy", "mobile-config", "--token", TOKEN, "--server", SERVER, "--format", fmt, *extra
    )


def test_android_app_restrictions_declare_every_key_with_its_value() -> None:
    root = ElementTree.fromstring(mobile("android", "--no-allow-print"))  # noqa: S314 - our output
    got = {
        n.get(f"{ANDROID}key"): n.get(f"{ANDROID}defaultValue") for n in root.iter("restriction")
    }
    assert got == {
        "server_url": SERVER,
        "user_email": "$EMAIL$",
        "deployment_token": TOKEN,
        "allow_copy": "true",
        "allow_print": "false",
        "allow_open_in": "true",
    }
    types = {
        n.get(f"{ANDROID}key"): n.get(f"{ANDROID}restrictionType") for n in root.iter("restriction")
    }
    assert types["allow_copy"] == "bool"


def test_android_enterprise_json_and_ios_plist_carry_the_same_keys() -> None:
    document = json.loads(mobile("android-json", "--mdm", "intune"))
    assert document["kind"] == "androidenterprise#managedConfiguration"
    props = {
        p["key"]: p.get("valueString", p.get("valueBool")) for p in document["managedProperty"]
    }
    assert props["user_email"] == "{{mail}}"
    assert props["allow_open_in"] is True
    plist = plistlib.loads(mobile("ios", "--mdm", "workspace-one", "--no-allow-copy").encode())
    assert plist["user_email"] == "{EmailAddress}"
    assert plist["allow_copy"] is False
    assert set(plist) == set(props) == {k.name for k in KEYS}


@pytest.mark.parametrize("fmt", ["android", "android-json", "ios"])
def test_the_agent_reads_each_format_once_the_mdm_substituted_the_email(
    fmt: str, tmp_path: Path
) -> None:
    text = mobile(fmt, "--no-allow-open-in")
    path = tmp_path / "managed"
    path.write_text(text.replace("$EMAIL$", "ann@example.com"))
    values = read_managed_config(path)
    assert values["server"] == SERVER
    assert values["token"] == TOKEN
    assert values["email"] == "ann@example.com"
    assert values["policy"] == {"allow_copy": True, "allow_print": True, "allow_open_in": False}


def test_an_unsubstituted_mdm_variable_is_a_clear_agent_error(tmp_path: Path) -> None:
    path = tmp_path / "managed.plist"
    path.write_text(mobile("ios"))
    with pytest.raises(ConfigError, match="did not substitute"):
        read_managed_config(path)


def test_unknown_mdm_or_format_is_refused() -> None:
    result = CliRunner().invoke(
        app, ["deploy", "mobile-config", "--token", TOKEN, "--server", SERVER, "--format", "palm"]
    )
    assert result.exit_code == 2
    assert "unknown format" in result.output


def test_install_commands_carry_server_and_token_for_each_platform() -> None:
    windows = cli(
        "deploy", "command", "--token", TOKEN, "--platform", "windows", "--server", SERVER
    )
    assert f'SERVER="{SERVER}" TOKEN="{TOKEN}"' in windows
    assert windows.startswith("msiexec /i fleetkeep-agent.msi /qn")
    linux = cli("deploy", "command", "--token", TOKEN, "--platform", "linux", "--server", SERVER)
    words = shlex.split(linux)
    assert words[:3] == ["env", f"FLEETKEEP_SERVER={SERVER}", f"FLEETKEEP_TOKEN={TOKEN}"]
    assert words[-2:] == ["fleetkeep-agent", "activate"]
    mac = cli("deploy", "command", "--token", TOKEN, "--platform", "macos", "--server", SERVER)
    assert "/Library/Application Support/fleetkeep/agent.toml" in mac
    assert f'token = "{TOKEN}"' in mac
    assert "installer -pkg" in mac
