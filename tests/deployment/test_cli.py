"""``fleetkeep tokens|devices|deploy`` as an admin types them, on the test database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from fleetkeep import clikit
from fleetkeep.cli import app
from tests.deployment.conftest import Org


@pytest.fixture
def cli(
    org: Org, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CliRunner]:
    monkeypatch.setenv("FLEETKEEP_DATABASE_URL", database_url)
    monkeypatch.setenv("FLEETKEEP_DATA_DIR", str(tmp_path / "cli"))
    monkeypatch.setenv("COLUMNS", "250")
    clikit.settings.cache_clear()
    clikit.engine.cache_clear()
    yield CliRunner()
    clikit.engine().dispose()
    clikit.settings.cache_clear()
    clikit.engine.cache_clear()


def run(cli: CliRunner, *args: str, code: int = 0) -> Result:
    result = cli.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result


def test_tokens_are_created_listed_without_the_secret_and_revoked(cli: CliRunner, org: Org) -> None:
    created = run(
        cli, "tokens", "create", "Berlin", "--expires-in-days", "7", "--profile", "Laptops"
    )
    secret = next(w for w in created.output.split() if w.startswith("fkt_"))
    listed = run(cli, "tokens", "list").output
    assert "Berlin" in listed
    assert secret not in listed
    token_id = next(
        t["id"]
        for t in org.client.get("/api/v1/deployment-tokens").json()
        if t["label"] == "Berlin"
    )
    run(cli, "tokens", "revoke", str(token_id))
    assert (
        org.activate(401, token=secret, email="x@example.com", hostname="h")["code"]
        == "token_revoked"
    )
    assert "already revoked" in run(cli, "tokens", "revoke", str(token_id), code=1).output


def test_devices_are_listed_changed_and_explained(cli: CliRunner, org: Org) -> None:
    org.user("ann@example.com")
    org.activate(email="ann@example.com", hostname="ANN-PC", serial_number="S-1")
    assert "ANN-PC" in run(cli, "devices", "list", "--user", "ann@example.com").output
    assert "S-1" in run(cli, "devices", "show", "ANN-PC").output
    assert "disabled" in run(cli, "devices", "disable", "ANN-PC").output
    explained = run(
        cli,
        "devices",
        "explain",
        "--email",
        "ann@example.com",
        "--hostname",
        "ANN-PC",
        "--serial",
        "S-1",
        code=1,
    ).output
    assert "device_disabled" in explained
    run(cli, "devices", "enable", "ANN-PC")
    assert (
        "awaits its replacement"
        in run(cli, "devices", "replace", "ANN-PC", "--restore", "DATA").output
    )
    explained = run(
        cli, "devices", "explain", "--email", "ann@example.com", "--hostname", "NEW"
    ).output
    assert "replacing device" in explained
    missing = run(
        cli, "devices", "explain", "--email", "nobody@example.com", "--hostname", "X", code=1
    )
    assert "user_not_found" in missing.output


def test_an_auth_key_is_printed_once_and_a_bad_mapping_file_lists_its_failed_rows(
    cli: CliRunner, org: Org, tmp_path: Path
) -> None:
    org.user("ann@example.com")
    out = run(cli, "deploy", "auth-key", "ann@example.com").output
    key = next(w for w in out.split() if w.startswith("fkk_"))
    assert org.activate(token=None, auth_key=key, hostname="h")["mode"] == "auth-key"
    bad = tmp_path / "map.csv"
    bad.write_text(
        "emailID,userName,deviceName,deviceIdentifierType,deviceIdentifier\n"
        "ann@example.com,ann,PC,serial-number,X1\n"
        "ghost@example.com,g,PC,serial-number,X2\n"
    )
    out = run(cli, "deploy", "import-mappings", str(bad), code=2).output
    assert "line 3: no user with email ghost@example.com" in out
    good = tmp_path / "good.csv"
    good.write_text(bad.read_text().splitlines()[0] + "\nann@example.com,ann,PC,serial-number,X1\n")
    assert "imported 1" in run(cli, "deploy", "import-mappings", str(good)).output
