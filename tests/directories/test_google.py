"""Google Workspace sync over real HTTPS against the Admin SDK double (tests/doubles/google.py)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.audit.service import SYSTEM, list_events
from fleetkeep.db import make_sessionmaker, transaction
from fleetkeep.directories import google
from fleetkeep.directories import service as directories
from fleetkeep.directories.models import SyncRun, SyncStatus
from fleetkeep.errors import InvalidInput
from fleetkeep.identity import service as identity
from fleetkeep.identity.models import User, UserState
from tests.directories.cloud_support import add_catch_all_mapping
from tests.doubles.google import ADMIN, GoogleDouble, service_account_key
from tests.doubles.serving import Serving
from tests.support.servers import ServerProcess, run_cli


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[tuple[GoogleDouble, Serving, dict[str, Any]]]:
    double = GoogleDouble()
    with Serving(double.app(), tmp_path / "google") as serving:
        double.base_url = serving.url
        key, public = service_account_key(f"{serving.url}/token")
        double.public_key = public
        yield double, serving, key


@pytest.fixture
def factory(clean_engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(clean_engine)


@pytest.fixture
def org(factory: sessionmaker[Session]) -> dict[str, int]:
    with transaction(factory) as s:
        staff = identity.create_profile(s, SYSTEM, name="Staff")
        eng = identity.create_profile(s, SYSTEM, name="Engineering")
        eu = identity.create_region(s, SYSTEM, name="eu", store_url="file:///tmp/eu")
        return {"staff": staff.id, "eng": eng.id, "eu": eu.id}


def make_directory(
    factory: sessionmaker[Session],
    data_dir: Path,
    workspace: tuple[GoogleDouble, Serving, dict[str, Any]],
    org: dict[str, int],
    *,
    groups: list[str] | None = None,
    admin: str = ADMIN,
    rules: list[tuple[dict[str, Any], int]] | None = None,
    **fields: Any,
) -> int:
    _, serving, key = workspace
    with transaction(factory) as s:
        directory = google.create_google_directory(
            s,
            SYSTEM,
            data_dir,
            name="Example Org",
            service_account_key=json.dumps(key),
            settings={
                "admin_email": admin,
                "groups": groups or [],
                "api_url": serving.url,
                "ca_file": str(serving.ca_file),
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
    return google.sync_google_directory(factory, SYSTEM, data_dir, directory_id, **kw)


def test_all_users_are_paged_and_suspended_users_are_preserved(
    workspace: tuple[GoogleDouble, Serving, dict[str, Any]],
    factory: sessionmaker[Session],
    org: dict[str, int],
    tmp_path: Path,
) -> None:
    double = workspace[0]
    for i in range(7):
        double.add_user(f"user.{i}@example.org")
    eng_rule = {
        "type": "attribute",
        "conditions": [{"attribute": "orgUnitPath", "op": "starts_with", "value": "/Engineering"}],
    }
    dev = double.add_user("dev.one@example.org", orgUnitPath="/Engineering/Backend")
    did = make_directory(
        factory,
        tmp_path,
        workspace,
        org,
        rules=[(eng_rule, org["eng"]), ({"type": "all"}, org["staff"])],
        hold_above_percent=100.0,
    )
    run = sync(factory, tmp_path, did)
    assert run.status is SyncStatus.SUCCEEDED, run.error
    users = owned(factory, did)
    assert len(users) == 8
    assert users["dev.one@example.org"].profile_id == org["eng"]
    assert users["dev.one@example.org"].display_name == "Dev One"
    double.users[dev]["suspended"] = True
    run = sync(factory, tmp_path, did)
    assert run.status is SyncStatus.SUCCEEDED, run.error
    suspended = owned(factory, did)["dev.one@example.org"]
    assert suspended.state is UserState.PRESERVED
    assert suspended.preserved_by == f"directory:{did}"
    double.users[dev]["suspended"] = False
    sync(factory, tmp_path, did)
    assert owned(factory, did)["dev.one@example.org"].state is UserState.ACTIVE


def test_selected_groups_include_nested_members_only(
    workspace: tuple[GoogleDouble, Serving, dict[str, Any]],
    factory: sessionmaker[Session],
    org: dict[str, int],
    tmp_path: Path,
) -> None:
    double = workspace[0]
    ann = double.add_user("ann@example.org")
    bob = double.add_user("bob@example.org")
    double.add_user("outsider@example.org")
    inner = double.add_group("backend@example.org", [bob])
    double.add_group("engineering@example.org", [ann, inner])
    did = make_directory(factory, tmp_path, workspace, org, groups=["engineering@example.org"])
    run = sync(factory, tmp_path, did)
    assert run.status is SyncStatus.SUCCEEDED, run.error
    assert set(owned(factory, did)) == {"ann@example.org", "bob@example.org"}


def test_many_users_follow_next_page_tokens(
    workspace: tuple[GoogleDouble, Serving, dict[str, Any]],
    factory: sessionmaker[Session],
    org: dict[str, int],
    tmp_path: Path,
) -> None:
    double = workspace[0]
    for i in range(1200):
        double.add_user(f"bulk.{i:04d}@example.org")
    did = make_directory(factory, tmp_path, workspace, org)
    run = sync(factory, tmp_path, did)
    assert run.status is SyncStatus.SUCCEEDED, run.error
    assert len(owned(factory, did)) == 1200
    assert sum("pageToken=" in r for r in double.requests) == 2


def test_throttling_errors_and_revoked_tokens_are_survived(
    workspace: tuple[GoogleDouble, Serving, dict[str, Any]],
    factory: sessionmaker[Session],
    org: dict[str, int],
    tmp_path: Path,
) -> None:
    double = workspace[0]
    double.add_user("ann@example.org")
    did = make_directory(factory, tmp_path, workspace, org)
    double.fail("/users", 429, times=1, retry_after="1")
    double.fail("/users", 502, times=1)
    assert sync(factory, tmp_path, did).status is SyncStatus.SUCCEEDED
    double.tokens.clear()
    double.add_user("bob@example.org")
    run = sync(factory, tmp_path, did)
    assert run.status is SyncStatus.SUCCEEDED, run.error
    assert set(owned(factory, did)) == {"ann@example.org", "bob@example.org"}


def test_missing_delegation_fails_with_googles_reason_and_changes_nothing(
    workspace: tuple[GoogleDouble, Serving, dict[str, Any]],
    factory: sessionmaker[Session],
    org: dict[str, int],
    tmp_path: Path,
) -> None:
    workspace[0].add_user("ann@example.org")
    did = make_directory(factory, tmp_path, workspace, org, admin="someone@example.org")
    run = sync(factory, tmp_path, did)
    assert run.status is SyncStatus.FAILED
    assert "unauthorized_client" in (run.error or "")
    assert owned(factory, did) == {}


def test_bad_keys_and_settings_are_refused_precisely() -> None:
    with pytest.raises(InvalidInput, match="not JSON"):
        google.check_key("{")
    with pytest.raises(InvalidInput, match="service account JSON key"):
        google.check_key(json.dumps({"type": "authorized_user"}))
    with pytest.raises(InvalidInput, match="lacks private_key"):
        google.check_key(
            json.dumps({"type": "service_account", "client_email": "a", "token_uri": "t"})
        )
    with pytest.raises(InvalidInput, match="admin_email"):
        google.normalize_settings({})


def test_api_registers_and_syncs(
    workspace: tuple[GoogleDouble, Serving, dict[str, Any]], owner: TestClient
) -> None:
    double, serving, key = workspace
    double.add_user("ann@example.org")
    made = owner.post(
        "/api/v1/google/directories",
        json={
            "name": "Example Org",
            "service_account_key": json.dumps(key),
            "admin_email": ADMIN,
            "api_url": serving.url,
            "ca_file": str(serving.ca_file),
        },
    )
    assert made.status_code == 201, made.text
    assert "PRIVATE KEY" not in made.text
    did = made.json()["id"]
    profile = owner.post("/api/v1/profiles", json={"name": "Staff"}).json()["id"]
    region = owner.post(
        "/api/v1/storage-regions", json={"name": "eu", "store_url": "file:///tmp/eu"}
    ).json()["id"]
    owner.post(
        f"/api/v1/directories/{did}/mappings",
        json={"rule": {"type": "all"}, "profile_id": profile, "storage_region_id": region},
    ).raise_for_status()
    run = owner.post(f"/api/v1/google/directories/{did}/sync")
    assert run.status_code == 200, run.text
    assert run.json()["status"] == "succeeded"
    assert [u["email"] for u in owner.get("/api/v1/users").json()["items"]] == ["ann@example.org"]
    history = owner.get(f"/api/v1/directories/{did}/syncs").json()
    assert history["items"][0]["created"] == 1


def test_quota_refusals_are_retried_with_back_off_and_retry_after_is_honoured(
    workspace: tuple[GoogleDouble, Serving, dict[str, Any]],
    factory: sessionmaker[Session],
    org: dict[str, int],
    tmp_path: Path,
) -> None:
    double = workspace[0]
    double.add_user("ann@example.org")
    did = make_directory(factory, tmp_path, workspace, org)
    # The Directory API refuses over-quota calls with 403 userRateLimitExceeded (not 429).
    double.fail("/users", 403, times=2)
    double.fail("/users", 429, times=1, retry_after="2")
    run = sync(factory, tmp_path, did)
    assert run.status is SyncStatus.SUCCEEDED, run.error
    assert set(owned(factory, did)) == {"ann@example.org"}
    times = double.request_times
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(gaps) == 3
    assert gaps[0] >= 0.45  # back-off 0.5 s
    assert gaps[1] >= 0.95  # then 1 s
    assert gaps[2] >= 1.9  # Retry-After: 2


def test_dry_run_previews_and_a_mass_suspension_is_held_and_audited(
    workspace: tuple[GoogleDouble, Serving, dict[str, Any]],
    factory: sessionmaker[Session],
    org: dict[str, int],
    tmp_path: Path,
) -> None:
    double = workspace[0]
    ids = [double.add_user(f"user.{i:02d}@example.org") for i in range(20)]
    did = make_directory(factory, tmp_path, workspace, org)
    dry = sync(factory, tmp_path, did, dry_run=True)
    assert dry.status is SyncStatus.DRY_RUN
    assert dry.report["counts"]["create"] == 20
    assert owned(factory, did) == {}
    assert sync(factory, tmp_path, did).status is SyncStatus.SUCCEEDED
    for uid in ids[:8]:
        double.users[uid]["suspended"] = True
    held = sync(factory, tmp_path, did)
    assert held.status is SyncStatus.HELD
    assert "preserve" in (held.held_reason or "")
    assert all(u.state is UserState.ACTIVE for u in owned(factory, did).values())
    with transaction(factory) as s:
        confirmed = directories.confirm_held_sync(s, SYSTEM, did, held.id)
        assert confirmed.status is SyncStatus.CONFIRMED
    preserved = [u for u in owned(factory, did).values() if u.state is UserState.PRESERVED]
    assert len(preserved) == 8
    with factory() as s:
        events = list_events(s, action="user.preserve", limit=50)
        assert {e.target_id for e in events} == {str(u.id) for u in preserved}
        history = list(
            s.scalars(select(SyncRun).where(SyncRun.directory_id == did).order_by(SyncRun.id))
        )
    assert [r.status for r in history] == [
        SyncStatus.DRY_RUN,
        SyncStatus.SUCCEEDED,
        SyncStatus.CONFIRMED,
    ]


def test_cli_registers_dry_runs_and_syncs(
    workspace: tuple[GoogleDouble, Serving, dict[str, Any]], server: ServerProcess, tmp_path: Path
) -> None:
    double, serving, key = workspace
    double.add_user("ann@example.org")
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps(key))
    added = run_cli(
        [
            "google",
            "add",
            "Example Org",
            "--admin-email",
            ADMIN,
            "--key-file",
            str(key_file),
            "--api-url",
            serving.url,
            "--ca-file",
            str(serving.ca_file),
        ],
        server.env,
    )
    assert "registered" in added.stdout
    with server.admin_client() as admin:
        add_catch_all_mapping(admin, "Example Org")
    dry = run_cli(["google", "sync", "Example Org", "--dry-run"], server.env)
    assert "would create 1" in dry.stdout
    real = run_cli(["google", "sync", "Example Org"], server.env)
    assert "did create 1" in real.stdout
