"""``fleetkeep directories …`` as an operator types it, against a real slapd.

In-process (Typer's runner) rather than one subprocess per command: the commands are the
same code, and a dozen interpreter start-ups would dominate the test's time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from fleetkeep import clikit
from fleetkeep.cli import app
from tests.support.slapd import AD_BASE, SYNC_PASSWORD, Slapd

Cli = Callable[..., Result]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    monkeypatch.setenv("FLEETKEEP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FLEETKEEP_DATABASE_URL", f"sqlite:///{tmp_path / 'data' / 'fk.db'}")
    clikit.settings.cache_clear()
    clikit.engine.cache_clear()
    runner = CliRunner()

    def invoke(args: list[str], stdin: str | None = None, check: bool = True) -> Result:
        result = runner.invoke(app, args, input=stdin)
        if check:
            assert result.exit_code == 0, f"{args}: {result.output}"
        return result

    yield invoke
    clikit.engine().dispose()
    clikit.settings.cache_clear()
    clikit.engine.cache_clear()


def test_add_test_map_dry_run_sync_and_history_from_the_command_line(
    slapd: Slapd, cli: Cli
) -> None:
    ou = slapd.new_ou()
    slapd.add_ad_user(ou, "cli1")
    slapd.add_ad_user(ou, "cli2", mail=None)
    cli(["profiles", "add", "Staff"])
    cli(["regions", "add", "local", "--store-url", "file:///srv/fk"])
    added = cli(
        [
            "directories",
            "add",
            "corp",
            "--base-dn",
            ou,
            "--host",
            f"127.0.0.1:{slapd.port}",
            "--bind-dn",
            slapd.sync_dn(AD_BASE),
            "--password-stdin",
        ],
        stdin=SYNC_PASSWORD + "\n",
    )
    assert "registered" in added.output
    listed = cli(["directories", "list"]).output
    assert "corp" in listed
    assert SYNC_PASSWORD not in listed
    tested = cli(["directories", "test", "corp"]).output
    assert "bind" in tested
    assert "FAILED" not in tested
    cli(
        [
            "directories",
            "mappings",
            "add",
            "corp",
            "--rule",
            json.dumps({"type": "all"}),
            "--profile",
            "Staff",
            "--region",
            "local",
        ],
    )
    dry = cli(["directories", "sync", "corp", "--dry-run"]).output
    assert "dry-run" in dry
    assert "no_email" in dry
    assert "cli1@corp.example" not in cli(["users", "list"]).output
    done = cli(["directories", "sync", "corp"]).output
    assert "succeeded" in done
    assert "cli1@corp.example" in cli(["users", "list"]).output
    history = cli(["directories", "syncs", "corp"]).output
    assert "succeeded" in history
    assert "dry-run" in history


def test_a_wrong_password_is_refused_by_add_naming_the_field(slapd: Slapd, cli: Cli) -> None:
    result = cli(
        [
            "directories",
            "add",
            "corp",
            "--base-dn",
            AD_BASE,
            "--host",
            f"127.0.0.1:{slapd.port}",
            "--bind-dn",
            slapd.sync_dn(AD_BASE),
            "--password-stdin",
        ],
        stdin="not-the-password\n",
        check=False,
    )
    assert result.exit_code != 0
    assert "bind_password" in result.output
    assert "invalid credentials" in result.output
    assert "corp" not in cli(["directories", "list"]).output


def test_mappings_are_listed_in_priority_order_and_reordered(slapd: Slapd, cli: Cli) -> None:
    ou = slapd.new_ou()
    cli(["profiles", "add", "Staff"])
    cli(["regions", "add", "local", "--store-url", "file:///srv/fk"])
    add = [
        "directories", "add", "corp", "--base-dn", ou, "--host", f"127.0.0.1:{slapd.port}",
        "--bind-dn", slapd.sync_dn(AD_BASE), "--password-stdin",
    ]  # fmt: skip
    typo = cli([*add, "--settings", '{"pagesize": 50}'], SYNC_PASSWORD + "\n", check=False)
    assert typo.exit_code != 0
    assert "unknown setting 'pagesize'" in typo.output
    cli([*add, "--settings", '{"page_size": 50, "disabled_filter": "(employeeType=gone)"}'],
        SYNC_PASSWORD + "\n")  # fmt: skip
    for group in ("first", "second"):
        added = cli(
            [
                "directories", "mappings", "add", "corp", "--rule",
                json.dumps({"type": "group", "group": group}), "--profile", "Staff",
                "--region", "local",
            ]
        ).output  # fmt: skip
        assert f"priority {1 if group == 'first' else 2}" in added
    listed = cli(["directories", "mappings", "list", "corp"]).output
    assert listed.index('"first"') < listed.index('"second"')
    ids = [int(line.split()[1]) for line in listed.splitlines() if "group" in line]
    reordered = cli(["directories", "mappings", "order", "corp", str(ids[1]), str(ids[0])]).output
    assert reordered.index('"second"') < reordered.index('"first"')
    bad = cli(["directories", "mappings", "order", "corp", str(ids[1])], check=False)
    assert bad.exit_code != 0
    assert "exactly once: [1, 2]" in bad.output
