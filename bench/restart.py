"""How fast a restarted worker drains a backlog, next to a warm one (local stack by default).

    python bench/restart.py --earns 5000

Three runs, each on fresh topics, consumer group and database, the worker as its own OS
process (`badge-worker run`), with static group membership (GROUP_INSTANCE_ID):
  warm:     the worker is running and idle; N earns are published; time to the last outcome;
  restart:  the worker is SIGKILLed while idle; N earns are published; a new process with
            the same GROUP_INSTANCE_ID starts; time from its start to the first and the last
            outcome;
  mid-kill: N earns are published while the worker processes them; SIGKILL after a third of
            the outcomes, restart at once; time from the restart to the last outcome, and how
            many outcomes are missing or duplicated (read_committed: must be 0 and 0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from pymongo import AsyncMongoClient

from badge_worker.adapters.mongo import Repositories
from badge_worker.client import Collector, Coord, Publisher
from badge_worker.domain.models import BadgeDefinition
from badge_worker.settings import Settings

ORG = 100458
DAY = 86_400.0


def fresh(base: Settings, **overrides: object) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return base.model_copy(update={
        "mongodb_database": f"bench_{tag}", "consumer_group": f"bench-{tag}", "topic_claims": f"r{tag}.claims",
        "topic_earns": f"r{tag}.earns", "topic_results": f"r{tag}.results", "topic_errors": f"r{tag}.errors",
        "topic_dlq": f"r{tag}.dlq", "redis_key_prefix": f"bench{tag}", "http_port": 0,
        "group_instance_id": f"bench-{tag}-0", **overrides})


def worker_env(s: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in s.model_dump().items():
        if value is not None:
            env[name.upper()] = str(value)
    return env


def start_worker(s: Settings, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "badge_worker.cli", "run"], env=worker_env(s),
                            stdout=out, stderr=out)


async def prepare(s: Settings) -> None:
    client: AsyncMongoClient = AsyncMongoClient(s.mongodb_uri)  # type: ignore[type-arg]
    now = time.time()
    badge = BadgeDefinition.model_validate({
        "id": "restart", "orgId": ORG, "startOn": now - DAY, "expiresOn": now + 365 * DAY, "active": True,
        "customerConstraints": [{"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 3}],
        "badgeConstraints": [{"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "refreshRate": 1,
                              "maxEarnLimit": 10**9}]})
    repos = Repositories(client[s.mongodb_database])
    await repos.ensure_indexes()
    await repos.upsert_badge(badge)
    await client.close()


def earns(n: int, prefix: str) -> list[dict[str, object]]:
    return [{"orgId": ORG, "requestId": f"{prefix}{i}", "badgeMetaId": "restart", "customerId": 1_000 + i % 2_000}
            for i in range(n)]


async def warm_up(s: Settings, collector: Collector, pub: Publisher) -> None:
    coords = await pub.send_many(s.topic_earns, earns(200, "w"))
    await collector.wait_for(coords, 180)


async def run_warm(base: Settings, n: int, log: Path) -> dict[str, float]:
    s = fresh(base)
    await prepare(s)
    proc = start_worker(s, log)
    try:
        async with Collector(s) as collector, Publisher(s) as pub:
            await warm_up(s, collector, pub)
            began = time.time()
            coords = await pub.send_many(s.topic_earns, earns(n, "x"))
            seen = await collector.wait_for(coords, 600)
            last = max(o.received_at for o in seen.values())
        return {"drain_s": last - began}
    finally:
        proc.kill()
        proc.wait()


async def run_restart(base: Settings, n: int, log: Path) -> dict[str, float]:
    s = fresh(base)
    await prepare(s)
    proc = start_worker(s, log)
    try:
        async with Collector(s) as collector, Publisher(s) as pub:
            await warm_up(s, collector, pub)
            proc.kill()
            proc.wait()
            coords = await pub.send_many(s.topic_earns, earns(n, "x"))
            began = time.time()
            proc = start_worker(s, log)
            seen = await collector.wait_for(coords, 600)
            first = min(o.received_at for o in seen.values())
            last = max(o.received_at for o in seen.values())
        return {"first_outcome_s": first - began, "drain_s": last - began}
    finally:
        proc.kill()
        proc.wait()


async def run_mid_kill(base: Settings, n: int, log: Path) -> dict[str, float]:
    s = fresh(base)
    await prepare(s)
    proc = start_worker(s, log)
    try:
        async with Collector(s) as collector, Publisher(s) as pub:
            await warm_up(s, collector, pub)
            before = len(collector.outcomes)
            coords: list[Coord] = await pub.send_many(s.topic_earns, earns(n, "x"))
            while len(collector.outcomes) - before < n // 3:
                await collector.poll(50)
            proc.kill()
            proc.wait()
            began = time.time()
            proc = start_worker(s, log)
            seen = await collector.wait_for(coords, 600)
            last = max(o.received_at for o in seen.values())
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:  # a duplicate would show up now
                await collector.poll(300)
        counts = Counter(collector.count_by_input()[c] for c in coords)
        return {"after_restart_drain_s": last - began, "missing": float(counts.get(0, 0)),
                "duplicated": float(sum(v for k, v in counts.items() if k > 1))}
    finally:
        proc.kill()
        proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--earns", type=int, default=5000)
    parser.add_argument("--log", type=Path, default=Path("bench-restart.log"))
    args = parser.parse_args()
    base = Settings()
    warm = await run_warm(base, args.earns, args.log)
    print(f"warm worker:      {args.earns} earns drained in {warm['drain_s']:.2f} s "
          f"({args.earns / warm['drain_s']:.0f} earns/s)")
    restart = await run_restart(base, args.earns, args.log)
    print(f"restarted worker: first outcome {restart['first_outcome_s']:.2f} s after the start, "
          f"{args.earns} drained in {restart['drain_s']:.2f} s ({args.earns / restart['drain_s']:.0f} earns/s)")
    mid = await run_mid_kill(base, args.earns, args.log)
    print(f"killed mid-drain: drained {mid['after_restart_drain_s']:.2f} s after the restart; "
          f"missing {mid['missing']:.0f}, duplicated {mid['duplicated']:.0f}")
    print(f"ratio restarted/warm drain time: {restart['drain_s'] / warm['drain_s']:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
