"""The scim2-tester compliance checker against a real ``fleetkeep serve`` process."""

from __future__ import annotations

from collections import Counter

import httpx2
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

from tests.directories.scim_support import prepare
from tests.support.servers import ServerProcess


def test_scim2_tester_passes_every_check_against_the_running_server(
    server: ServerProcess,
) -> None:
    with server.admin_client() as admin:
        setup = prepare(admin)
    with httpx2.Client(
        base_url=f"{server.url}/scim/v2",
        headers={"Authorization": f"Bearer {setup.token}"},
        timeout=30,
    ) as http:
        client = SyncSCIMClient(http)
        results = check_server(client)
    failed = [r for r in results if r.status not in (Status.SUCCESS, Status.SKIPPED)]
    summary = {s.name: sum(1 for r in results if r.status is s) for s in Status}
    per_type = Counter((r.resource_type or "discovery/misc", r.status.name) for r in results)
    print("scim2-tester summary:", summary, dict(sorted(per_type.items())))
    assert results
    assert not failed, "\n".join(
        f"{r.status.name} {r.resource_type or ''} {r.title}: {r.reason}" for r in failed
    )
    assert summary["SUCCESS"] > 20
