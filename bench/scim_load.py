"""SCIM load: 20,000 mixed operations from 32 concurrent clients against ``fleetkeep serve``.

Mix: 60 % GET by filter (``userName eq``), 25 % PATCH (replace title / toggle active),
15 % POST (new users). The server runs on a throw-away PostgreSQL database on loopback;
the load generator runs on the same machine (it takes CPU from the server, as a real
co-located client would not: the figures are a floor). Prints throughput, p50/p99 latency
and errors, against the target (500 req/s, p99 < 50 ms, 0 errors) as a ratio.

    uv run python bench/scim_load.py [--ops 20000] [--clients 32] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import create_pg_database, drop_pg_database  # noqa: E402
from tests.support.servers import (  # noqa: E402
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    ServerProcess,
    fleetkeep_env,
    free_port,
    run_cli,
    wait_ready,
)

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
TARGET_RPS, TARGET_P99_MS = 500.0, 50.0


def start(data_dir: Path, url: str, index: int) -> ServerProcess:
    """One ``fleetkeep serve`` replica; all share the database (and the data directory)."""
    port = free_port()
    env = fleetkeep_env(
        data_dir, url, FLEETKEEP_LISTEN_PORT=str(port), FLEETKEEP_LOG_LEVEL="WARNING"
    )
    if index == 0:
        run_cli(
            ["init", "--email", ADMIN_EMAIL, "--password-stdin"], env, stdin=ADMIN_PASSWORD + "\n"
        )
    log_path = data_dir / f"server{index}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "fleetkeep"), "serve", "--no-jobs"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = ServerProcess(f"http://127.0.0.1:{port}", data_dir, url, env, process, log_path)
    wait_ready(server)
    return server


def prepare(server: ServerProcess) -> str:
    with server.admin_client() as admin:
        admin.post("/api/v1/profiles", json={"name": "Staff"}).raise_for_status()
        admin.post(
            "/api/v1/storage-regions", json={"name": "eu", "store_url": "file:///tmp/fk-bench"}
        ).raise_for_status()
        admin.post(
            "/api/v1/scim/mappings",
            json={"rule": {"type": "all"}, "profile": "Staff", "region": "eu"},
        ).raise_for_status()
        token: str = admin.post("/api/v1/scim/token", json={}).json()["token"]
    return token


def user_body(name: str) -> dict[str, object]:
    return {
        "schemas": [USER],
        "userName": name,
        "active": True,
        "displayName": name.split("@")[0],
        "emails": [{"value": name, "type": "work", "primary": True}],
    }


async def run_load(
    bases: list[str], token: str, ops: int, clients: int, seed_users: int
) -> tuple[list[float], int, float, dict[str, int]]:
    """Clients spread over the replicas round-robin, as a load balancer would."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"}
    # uvicorn closes a connection idle for 5 s; dropping ours after 4 s avoids the race where
    # the client reuses a connection the server is closing (a ReadError that is no server fault).
    limits = httpx.Limits(
        max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=4.0
    )
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=60) as http:
        known: list[tuple[str, str]] = []
        for i in range(seed_users):
            name = f"seed{i}@bench.example"
            response = await http.post(f"{bases[0]}/scim/v2/Users", json=user_body(name))
            response.raise_for_status()
            known.append((response.json()["id"], name))
        rng = random.Random(7)
        plan = rng.choices(["get", "patch", "post"], weights=[60, 25, 15], k=ops)
        latencies: list[float] = []
        errors: dict[str, int] = {}
        queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        for item in enumerate(plan):
            queue.put_nowait(item)

        async def worker(base: str) -> None:
            while not queue.empty():
                n, kind = queue.get_nowait()
                uid, name = known[rng.randrange(len(known))]
                began = time.perf_counter()
                try:
                    response = await send(base, kind, n, uid, name)
                except httpx.TransportError as exc:
                    latencies.append((time.perf_counter() - began) * 1000)
                    key = f"{kind} {type(exc).__name__}"
                    errors[key] = errors.get(key, 0) + 1
                    continue
                latencies.append((time.perf_counter() - began) * 1000)
                if kind == "post" and response.status_code == 201:
                    known.append((response.json()["id"], response.json()["userName"]))
                missing = kind == "get" and not response.json().get("Resources")
                if response.status_code >= 400 or missing:
                    key = f"{kind} {response.status_code}"
                    errors[key] = errors.get(key, 0) + 1

        async def send(base: str, kind: str, n: int, uid: str, name: str) -> httpx.Response:
            if kind == "get":
                return await http.get(
                    f"{base}/scim/v2/Users", params={"filter": f'userName eq "{name}"'}
                )
            if kind == "patch":
                op = {"op": "replace", "path": "title", "value": f"t{n}"}
                return await http.patch(
                    f"{base}/scim/v2/Users/{uid}", json={"schemas": [PATCH], "Operations": [op]}
                )
            return await http.post(
                f"{base}/scim/v2/Users", json=user_body(f"load{n}@bench.example")
            )

        began = time.perf_counter()
        await asyncio.gather(*(worker(bases[i % len(bases)]) for i in range(clients)))
        elapsed = time.perf_counter() - began
    return latencies, sum(errors.values()), elapsed, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seed-users", type=int, default=1000)
    parser.add_argument(
        "--servers", type=int, default=1, help="fleetkeep serve replicas (round-robin)"
    )
    args = parser.parse_args()
    load = os.getloadavg()[0]
    url = create_pg_database("fk_bench")
    with tempfile.TemporaryDirectory(prefix="fk-bench-") as tmp:
        servers = [start(Path(tmp), url, i) for i in range(args.servers)]
        try:
            token = prepare(servers[0])
            bases = [server.url for server in servers]
            latencies, errors, elapsed, kinds = asyncio.run(
                run_load(bases, token, args.ops, args.clients, args.seed_users)
            )
        finally:
            for server in servers:
                if server.process.poll() is not None:
                    print(f"server {server.url} died:\n{server.log()[-3000:]}")
                server.process.send_signal(signal.SIGINT)
                server.process.wait(20)
            drop_pg_database(url)
    latencies.sort()
    rps = len(latencies) / elapsed
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"SCIM load: {len(latencies)} ops, {args.clients} clients, PostgreSQL, "
        f"{args.servers} server process(es), {os.cpu_count()} CPUs, load before start "
        f"{load:.1f} (other work on the machine)"
    )
    ratio_rps, ratio_p99 = rps / TARGET_RPS, p99 / TARGET_P99_MS
    print(f"  throughput  ours {rps:8.1f} req/s target {TARGET_RPS:4.0f}  ratio {ratio_rps:.2f}")
    print(f"  p50         ours {p50:8.1f} ms")
    print(
        f"  p99         ours {p99:8.1f} ms     target {TARGET_P99_MS:4.0f}  ratio {ratio_p99:.2f}"
    )
    print(f"  errors      {errors} {kinds if kinds else ''}")


if __name__ == "__main__":
    main()
