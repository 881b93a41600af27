"""The read API's latency and throughput as the store grows, in one run, one table.

    .venv/bin/python bench/api.py                 # 10,000 then 1,000,000 earned badges
    .venv/bin/python bench/api.py --large 100000  # a shorter second step

One database, filled as the worker writes earned badges: first 1,000 customers x 10 badges
(10,000 documents), then other customers up to `--large` documents (the first 1,000 keep
theirs). After each fill `badge-worker api` runs as its own process and is asked, over HTTP,
at a fixed concurrency:
  customer     GET /v1/badges/customer/{id} (EARNED and AVAILABLE together, limit 10) for a
               random one of the first 1,000 customers;
  statistics   GET /v1/badges/badgeMeta/{id}?includeStatistics=true for a random badge.
Printed: requests/s, p50/p99 in ms, CPU ms per request of the API process, of FerretDB and of
PostgreSQL (all its processes; 0 on the SQLite backend).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from bson import ObjectId
from pymongo import AsyncMongoClient

from badge_worker.adapters.mongo import Repositories
from badge_worker.api.keys import ApiKeys
from badge_worker.domain.models import BadgeDefinition
from badge_worker.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import cpu_seconds, postgres_seconds

ORG = 100458
DAY = 86_400.0
BADGES = 50
CUSTOMERS = 1_000
PER_CUSTOMER = 10
ROOT = Path(__file__).resolve().parent.parent


def ferretdb_pid() -> int | None:
    try:
        return int((Path(os.environ.get("STACK_DIR", ROOT / ".stack")) / "run" / "ferretdb.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def badge(i: int, now: float) -> BadgeDefinition:
    return BadgeDefinition.model_validate({
        "id": f"api-{i:02d}", "orgId": ORG, "name": f"Badge {i:02d}", "startOn": now - 90 * DAY,
        "expiresOn": now + 365 * DAY, "earnType": "EARN", "active": True, "badgeRank": i % 7 or None,
        "badgeGroupId": f"g{i % 5}",
        "customerConstraints": [{"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 20}],
        "badgeConstraints": [{"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "refreshRate": 1,
                              "maxEarnLimit": 10**9, "startDate": now - 90 * DAY}]})


async def fill(repos: Repositories, start: int, stop: int, now: float, chunk: int = 5_000) -> None:
    """Earned badges number `start`..`stop`: document i is customer i // 10's earn of badge i % 50."""
    for first in range(start, stop, chunk):
        docs = []
        for i in range(first, min(stop, first + chunk)):
            customer, badge_no = 1 + i // PER_CUSTOMER, (i * 7 + i // PER_CUSTOMER) % BADGES
            event = now - (i % 80) * DAY - 60
            docs.append({"_id": ObjectId(), "orgId": ORG, "requestId": f"fill-{i}", "status": "ACTIVE",
                         "customerId": customer, "badgeMetaId": f"api-{badge_no:02d}",
                         "badgeGroupId": f"g{badge_no % 5}", "eventDate": event, "earnedOn": event + 1,
                         "expiresOn": event + 365 * DAY, "issuedId": None, "triggeredBy": None,
                         "limits": [{"kind": "l", "counter": f"c:{customer}:x:life"}]})
        await repos.earned.insert_many(docs, ordered=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api(s: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update({"MONGODB_URI": s.mongodb_uri, "MONGODB_DATABASE": s.mongodb_database, "API_HOST": "127.0.0.1",
                "API_PORT": str(port), "LOG_LEVEL": "WARNING", "MONGODB_SOCKET_TIMEOUT_MS": "1800000"})
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "badge_worker.cli", "api"], env=env, stdout=out, stderr=out)


async def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        for _ in range(300):
            if proc.poll() is not None:
                raise SystemExit("the API exited; see the log")
            try:
                if (await http.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("the API did not get ready")


async def measure(url: str, key: str, paths: list[str], concurrency: int, pids: dict[str, int]
                  ) -> dict[str, float]:
    latencies: list[float] = []
    failures = 0
    queue = list(paths)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    pg_before = postgres_seconds()

    async def client() -> None:
        nonlocal failures
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                     timeout=1800) as http:
            while queue:
                path = queue.pop()
                t = time.perf_counter()
                response = await http.get(path)
                latencies.append(time.perf_counter() - t)
                failures += response.status_code != 200

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    cpu["postgres"] = postgres_seconds() - pg_before
    return {"n": n, "rps": n / elapsed, "p50": statistics.median(latencies) * 1000,
            "p99": latencies[min(n - 1, round(0.99 * (n - 1)))] * 1000, "failures": failures,
            **{f"cpu_{name}": cpu[name] * 1000 / n for name in cpu}}


async def step(s: Settings, key: str, stored: int, requests: int, concurrency: int, log: Path,
               rows: list[tuple[str, int, dict[str, float]]]) -> None:
    port = free_port()
    proc = start_api(s, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, proc)
        pids = {"api": proc.pid}
        ferret = ferretdb_pid()
        if ferret:
            pids["ferretdb"] = ferret
        rng = random.Random(stored)
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=1800) as h:
            await h.get("/v1/badges/customer/1")  # the org's definitions cached, connections open
        for name, make in (("customer", lambda: f"/v1/badges/customer/{rng.randint(1, CUSTOMERS)}"),
                           ("statistics", lambda: f"/v1/badges/badgeMeta/api-{rng.randrange(BADGES):02d}"
                                                  "?includeStatistics=true")):
            figures = await measure(url, key, [make() for _ in range(requests)], concurrency, pids)
            rows.append((name, stored, figures))
            print(f"  {name:<10} {stored:>9,} stored: {figures['rps']:8.1f} req/s  p50 {figures['p50']:9.1f} ms  "
                  f"p99 {figures['p99']:9.1f} ms  " + "  ".join(
                      f"{k[4:]} {v:7.2f} CPU-ms/req" for k, v in figures.items() if k.startswith("cpu_"))
                  + (f"  FAILED {figures['failures']:.0f}" if figures["failures"] else ""), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", type=int, default=1_000_000, help="earned badges in the second step")
    parser.add_argument("--requests", type=int, default=400, help="requests per endpoint at 10,000 stored")
    parser.add_argument("--large-requests", type=int, default=20, help="requests per endpoint at --large")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--log", type=Path, default=ROOT / "bench-api.log")
    args = parser.parse_args()
    base = Settings()
    s = base.model_copy(update={"mongodb_database": f"bench_api_{uuid.uuid4().hex[:8]}"})
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(s.mongodb_uri, socketTimeoutMS=1_800_000)
    repos = Repositories(client[s.mongodb_database])
    now = time.time()
    rows: list[tuple[str, int, dict[str, float]]] = []
    try:
        await repos.ensure_indexes()
        for i in range(BADGES):
            await repos.upsert_badge(badge(i, now))
        _, key = await ApiKeys(repos.db).create(ORG, "bench")
        small = CUSTOMERS * PER_CUSTOMER
        print(f"store: {s.mongodb_uri.split('@')[-1]} database {s.mongodb_database}", flush=True)
        t = time.perf_counter()
        await fill(repos, 0, small, now)
        print(f"filled {small:,} earned badges in {time.perf_counter() - t:.1f} s", flush=True)
        await step(s, key, small, args.requests, args.concurrency, args.log, rows)
        t = time.perf_counter()
        await fill(repos, small, args.large, now)
        print(f"filled up to {args.large:,} earned badges in {time.perf_counter() - t:.1f} s", flush=True)
        await step(s, key, args.large, args.large_requests, min(args.concurrency, 2), args.log, rows)
    finally:
        await client.drop_database(s.mongodb_database)
        await client.close()
    print("\n| endpoint | stored | requests/s | p50 ms | p99 ms | API CPU-ms/req | FerretDB CPU-ms/req "
          "| PostgreSQL CPU-ms/req |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, stored, f in rows:
        print(f"| {name} | {stored:,} | {f['rps']:.1f} | {f['p50']:.1f} | {f['p99']:.1f} | {f['cpu_api']:.2f} | "
              f"{f.get('cpu_ferretdb', float('nan')):.2f} | {f['cpu_postgres']:.2f} |")
    for name in ("customer", "statistics"):
        small_row, large_row = (f for n, _, f in rows if n == name)
        print(f"{name}: p50 grows {large_row['p50'] / small_row['p50']:.0f}x from {rows[0][1]:,} to "
              f"{args.large:,} stored")


if __name__ == "__main__":
    asyncio.run(main())
