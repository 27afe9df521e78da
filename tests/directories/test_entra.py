"""Microsoft Entra ID sync over real HTTPS against the Graph double (tests/doubles/graph.py)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.audit.service import SYSTEM
from fleetkeep.db import make_sessionmaker, transaction
from fleetkeep.directories import entra
from fleetkeep.directories import service as directories
from fleetkeep.directories.models import SyncStatus
from fleetkeep.errors import InvalidInput
from fleetkeep.identity import service as identity
from fleetkeep.identity.models import User, UserState
from tests.directories.cloud_support import add_catch_all_mapping
from tests.doubles.graph import CLIENT_ID, CLIENT_SECRET, TENANT, GraphDouble
from tests.doubles.serving import Serving
from tests.support.servers import ServerProcess, run_cli


@pytest.fixture
def graph(tmp_path: Path) -> Iterator[tuple[GraphDouble, Serving]]:
    double = GraphDouble()
    with Serving(double.app(), tmp_path / "graph") as serving:
        double.base_url = serving.url
        yield double, serving


@pytest.fixture
def factory(clean_engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(clean_engine)


@pytest.fixture
def org(factory: sessionmaker[Session]) -> dict[str, int]:
    with transaction(factory) as s:
        staff = identity.create_profile(s, SYSTEM, name="Staff")
        sales = identity.create_profile(s, SYSTEM, name="Sales")
        eu = identity.create_region(s, SYSTEM, name="eu", store_url="file:///tmp/eu")
        return {"staff": staff.id, "sales": sales.id, "eu": eu.id}


def make_directory(
    factory: sessionmaker[Session],
    data_dir: Path,
    serving: Serving,
    org: dict[str, int],
    *,
    groups: list[str] | None = None,
    secret: str = CLIENT_SECRET,
    rules: list[tuple[dict[str, Any], int]] | None = None,
    **fields: Any,
) -> int:
    with transaction(factory) as s:
        directory = entra.create_entra_directory(
            s,
            SYSTEM,
            data_dir,
            name="Contoso",
            client_secret=secret,
            settings={
                "tenant_id": TENANT,
                "client_id": CLIENT_ID,
                "groups": groups or [],
                "authority_url": serving.url,
                "graph_url": serving.url,
                "ca_file": str(serving.ca_file),
                "page_size": 2,
            },
            **fields,
        )
        for priority, (rule, profile) in enumerate(rules or [({"type": "all"}, org["staff"])]):
            directories.create_mapping(
                s,
                SYSTEM,
                directory.id,
                rule=rule,
                profile_id=profile,
                storage_region_id=org["eu"],
                priority=priority,
            )
        return directory.id


def owned(factory: sessionmaker[Session], directory_id: int) -> dict[str, User]:
    with factory() as s:
        found = s.scalars(select(User).where(User.source == f"directory:{directory_id}"))
        return {u.email: u for u in found}


def sync(factory: sessionmaker[Session], data_dir: Path, directory_id: int, **kw: Any) -> Any:
    return entra.sync_entra_directory(factory, SYSTEM, data_dir, directory_id, **kw)


def test_whole_tenant_import_pages_keeps_upn_and_then_uses_delta(
    graph: tuple[GraphDouble, Serving],
    factory: sessionmaker[Session],
    org: dict[str, int],
    tmp_path: Path,
) -> None:
    double, serving = graph
    ann = double.add_user("ann@contoso.com", department="Sales", onPremisesSamAccountName="ann")
    bob = double.add_user("bob@contoso.com", department="Ops")
    double.add_user("cy@contoso.com", accountEnabled=False)
    double.add_user("guest_gmail.com#EXT#@contoso.onmicrosoft.com", mail=None)
    sales_rule = {
        "type": "attribute",
        "conditions": [{"attribute": "department", "op": "equals", "value": "Sales"}],
    }
    did = make_directory(
        factory,
        tmp_path,
        serving,
        org,
        rules=[(sales_rule, org["sales"]), ({"type": "all"}, org["staff"])],
        hold_above_percent=100.0,
    )
    run = sync(factory, tmp_path, did)
    assert run.status is SyncStatus.SUCCEEDED, run.error
    users = owned(factory, did)
    assert set(users) == {"ann@contoso.com", "bob@contoso.com"}
    assert users["ann@contoso.com"].upn == "ann@contoso.com"
    assert users["ann@contoso.com"].profile_id == org["sales"]
    assert users["bob@contoso.com"].profile_id == org["staff"]
    assert run.report["counts"]["skip"] == 2  # disabled and the guest without a mail
    assert any("skiptoken" in r for r in double.requests)  # followed @odata.nextLink

    # Second sync: only the changes since the delta link are read (Graph sends a changed user
    # as its id and the changed properties, paged like any delta), and merged.
    double.requests.clear()
    double.update_user(bob, displayName="Robert", department="Sales")
    double.delete_user(ann)
    double.add_user("dee@contoso.com")
    run = sync(factory, tmp_path, did)
    assert run.status is SyncStatus.SUCCEEDED, run.error
    assert "deltatoken" in double.requests[0]
    assert all("token" in r for r in double.requests)  # never a fresh full pass
    assert len(double.requests) == 2  # three changes, two per page
    users = owned(factory, did)
    assert set(users) == {"ann@contoso.com", "bob@contoso.com", "dee@contoso.com"}
    assert users["bob@contoso.com"].display_name == "Robert"
    assert users["bob@contoso.com"].upn == "bob@contoso.com"  # kept from the first pass
    assert users["bob@contoso.com"].profile_id == org["sales"]
    assert users["ann@contoso.com"].state is UserState.PRESERVED
    assert users["ann@contoso.com"].preserved_by == f"directory:{did}"


def test_expired_delta_link_falls_back_to_a_full_pass(
    graph: tuple[GraphDouble, Serving],
    factory: sessionmaker[Session],
    org: dict[str, int],
    tmp_path: Path,
) -> None:
    double, serving = graph
    double.add_user("ann@contoso.com")
    did = make_directory(factory, tmp_path, serving, org)
    assert sync(factory, tmp_path, did).status is SyncStatus.SUCCEEDED
    double.expired_delta_tokens = True
    double.add_user("dan@contoso.com")
    run = sync(factory, tmp_path, did)
    assert run.status is SyncStatus.SUCCEEDED, run.error
    assert set(owned(factory, did)) == {"ann@contoso.com", "dan@contoso.com"}


def test_group_import_follows_nested_groups_of_every_kind(
    graph: tuple[GraphDouble, Serving],
    factory: sessionmaker[Session],
    org: dict[str, int],
    tmp_path: Path,
) -> None:
    double, serving = graph
    ann = double.add_user("ann@contoso.com")
    bob = double.add_user("bob@contoso.com")
    cy = double.add_user("cy@contoso.com")
    double.add_user("outsider@contoso.com")
    dee = double.add_user("dee@contoso.com")
    innermost = double.add_group("Sales Ops", [dee], kind="security")
    inner = double.add_group("EU Sales", [bob, innermost], kind="distribution")
    m365 = double.add_group("Sales Team", [ann, inner], kind="microsoft365")
    mail_sec = double.add_group("Finance", [cy], kind="mail-security")
    did = make_directory(
        factory,
        tmp_path,
        serving,
        org,
        groups=[m365, mail_sec],
        rules=[
            ({"type": "group", "group": "sales team"}, org["sales"]),
            ({"type": "all"}, org["staff"]),
        ],
    )
    run = sync(factory, tmp_path, did)
    assert run.status is SyncStatus.SUCCEEDED, run.error
    users = owned(factory, did)
    assert set(users) == {"ann@contoso.com", "bob@contoso.com", "cy@contoso.com", "dee@contoso.com"}
    assert users["bob@contoso.com"].profile_id == org["sales"]  # through the nested group
    assert users["dee@contoso.com"].profile_id == org["sales"]  # two levels down
    assert users["cy@contoso.com"].profile_id == org["staff"]


def test_throttling_server_errors_and_revoked_tokens_are_survived(
    graph: tuple[GraphDouble, Serving],
    factory: sessionmaker[Session],
    org: dict[str, int],
    tmp_path: Path,
) -> None:
    double, serving = graph
    for i in range(5):
        double.add_user(f"u{i}@contoso.com")
    did = make_directory(factory, tmp_path, serving, org)
    double.fail("/v1.0/users/delta", 429, times=2, retry_after="1")
    double.fail("/v1.0/users/delta", 503, times=1)
    run = sync(factory, tmp_path, did)
    assert run.status is SyncStatus.SUCCEEDED, run.error
    assert len(owned(factory, did)) == 5
    tokens_before = double.token_requests
    double.revoke_tokens()
    double.add_user("late@contoso.com")
    run = sync(factory, tmp_path, did)
    assert run.status is SyncStatus.SUCCEEDED, run.error
    assert double.token_requests > tokens_before
    assert "late@contoso.com" in owned(factory, did)


def test_retry_after_is_waited_for_and_server_errors_back_off_exponentially(
    graph: tuple[GraphDouble, Serving],
    factory: sessionmaker[Session],
    org: dict[str, int],
    tmp_path: Path,
) -> None:
    double, serving = graph
    double.add_user("ann@contoso.com")
    did = make_directory(factory, tmp_path, serving, org)
    double.fail("/v1.0/users/delta", 429, times=1, retry_after="2")
    double.fail("/v1.0/users/delta", 503, times=3)
    run = sync(factory, tmp_path, did)
    assert run.status is SyncStatus.SUCCEEDED, run.error
    times = double.request_times
    assert len(times) == 5
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps[0] >= 1.9  # Retry-After: 2
    # then 503s without Retry-After: 0.5 s · 2^(attempt-1) for attempts 2, 3, 4
    assert gaps[1] >= 0.95
    assert gaps[2] >= 1.9
    assert gaps[3] >= 3.9


def test_persistent_failure_aborts_changes_nothing_and_alerts(
    graph: tuple[GraphDouble, Serving],
    factory: sessionmaker[Session],
    org: dict[str, int],
    tmp_path: Path,
) -> None:
    double, serving = graph
    double.add_user("ann@contoso.com")
    did = make_directory(factory, tmp_path, serving, org)
    double.fail("/v1.0/users/delta", 500, times=100)
    run = sync(factory, tmp_path, did)
    assert run.status is SyncStatus.FAILED
    assert "HTTP 500" in (run.error or "")
    assert owned(factory, did) == {}
    with factory() as s:
        from fleetkeep.alerts.service import list_alerts

        assert [a.type for a in list_alerts(s)] == ["directory.sync_failed"]


def test_wrong_client_secret_fails_with_entras_reason(
    graph: tuple[GraphDouble, Serving],
    factory: sessionmaker[Session],
    org: dict[str, int],
    tmp_path: Path,
) -> None:
    double, serving = graph
    double.add_user("ann@contoso.com")
    did = make_directory(factory, tmp_path, serving, org, secret="wrong")
    run = sync(factory, tmp_path, did)
    assert run.status is SyncStatus.FAILED
    assert "AADSTS7000215" in (run.error or "")


def test_mass_removal_is_held_for_confirmation(
    graph: tuple[GraphDouble, Serving],
    factory: sessionmaker[Session],
    org: dict[str, int],
    tmp_path: Path,
) -> None:
    double, serving = graph
    ids = [double.add_user(f"u{i}@contoso.com") for i in range(20)]
    did = make_directory(factory, tmp_path, serving, org)
    assert sync(factory, tmp_path, did).status is SyncStatus.SUCCEEDED
    for uid in ids[:10]:
        double.delete_user(uid)
    dry = sync(factory, tmp_path, did, dry_run=True)
    assert dry.status is SyncStatus.DRY_RUN
    assert dry.report["counts"]["preserve"] == 10
    held = sync(factory, tmp_path, did)
    assert held.status is SyncStatus.HELD
    assert all(u.state is UserState.ACTIVE for u in owned(factory, did).values())


def test_settings_are_validated() -> None:
    with pytest.raises(InvalidInput, match="client_id"):
        entra.normalize_settings({"tenant_id": "t", "client_id": "not-a-guid"})
    with pytest.raises(InvalidInput, match="https"):
        entra.normalize_settings(
            {"tenant_id": "t", "client_id": CLIENT_ID, "graph_url": "http://graph.example"}
        )
    with pytest.raises(InvalidInput, match="unknown Entra setting"):
        entra.normalize_settings({"tenant_id": "t", "client_id": CLIENT_ID, "colour": "red"})


def test_api_registers_and_dry_runs_without_revealing_the_secret(
    graph: tuple[GraphDouble, Serving], owner: TestClient
) -> None:
    double, serving = graph
    double.add_user("ann@contoso.com")
    made = owner.post(
        "/api/v1/entra/directories",
        json={
            "name": "Contoso",
            "tenant_id": TENANT,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "authority_url": serving.url,
            "graph_url": serving.url,
            "ca_file": str(serving.ca_file),
        },
    )
    assert made.status_code == 201, made.text
    assert CLIENT_SECRET not in made.text
    did = made.json()["id"]
    profile = owner.post("/api/v1/profiles", json={"name": "Staff"}).json()["id"]
    region = owner.post(
        "/api/v1/storage-regions", json={"name": "eu", "store_url": "file:///tmp/eu"}
    ).json()["id"]
    owner.post(
        f"/api/v1/directories/{did}/mappings",
        json={"rule": {"type": "all"}, "profile_id": profile, "storage_region_id": region},
    ).raise_for_status()
    run = owner.post(f"/api/v1/entra/directories/{did}/sync", params={"dry_run": True})
    assert run.status_code == 200, run.text
    assert run.json()["status"] == "dry-run"
    assert run.json()["report"]["counts"]["create"] == 1
    assert owner.get("/api/v1/users").json()["items"] == []


def test_cli_registers_dry_runs_and_syncs(
    graph: tuple[GraphDouble, Serving], server: ServerProcess
) -> None:
    double, serving = graph
    double.add_user("ann@contoso.com")
    added = run_cli(
        [
            "entra",
            "add",
            "Contoso",
            "--tenant-id",
            TENANT,
            "--client-id",
            CLIENT_ID,
            "--authority-url",
            serving.url,
            "--graph-url",
            serving.url,
            "--ca-file",
            str(serving.ca_file),
        ],
        server.env,
        stdin=CLIENT_SECRET + "\n",
    )
    assert "registered" in added.stdout
    with server.admin_client() as admin:
        add_catch_all_mapping(admin, "Contoso")
    dry = run_cli(["entra", "sync", "Contoso", "--dry-run"], server.env)
    assert "dry-run" in dry.stdout
    assert "would create 1" in dry.stdout
    real = run_cli(["entra", "sync", "Contoso"], server.env)
    assert "did create 1" in real.stdout
    wrong = run_cli(["google", "sync", "Contoso"], server.env, check=False)
    assert wrong.returncode == 2  # invalid input
    assert "is of kind entra, not google" in wrong.stderr
