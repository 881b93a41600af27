"""Throughput and latency of the worker on the running servers (local stack by default).

    python bench/throughput.py                 # batched worker vs a naive one-at-a-time worker
    python bench/throughput.py --earns 20000   # a longer drain

Two phases per configuration, each on fresh topics, consumer group and database:
  drain:   N earns published first, then the worker starts; earns/s = N / time to the last outcome;
  latency: the worker running, earns published at a steady rate; produce -> outcome latency.
"naive" is the same worker with one record per fetch, one entity at a time: one
transaction per message, the way a plain consume-process-commit loop works.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass

from pymongo import AsyncMongoClient

from badge_worker import logs
from badge_worker.adapters.mongo import Repositories
from badge_worker.client import Collector, Publisher
from badge_worker.domain.models import BadgeDefinition
from badge_worker.service.worker import Worker
from badge_worker.settings import Settings

ORG = 100458


@dataclass
class Figures:
    name: str
    earns: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.earns / self.seconds


def fresh(base: Settings, **overrides: object) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return base.model_copy(update={
        "mongodb_database": f"bench_{tag}", "consumer_group": f"bench-{tag}", "topic_claims": f"b{tag}.claims",
        "topic_earns": f"b{tag}.earns", "topic_results": f"b{tag}.results", "topic_errors": f"b{tag}.errors",
        "topic_dlq": f"b{tag}.dlq", "redis_key_prefix": f"bench{tag}", "http_port": 0, **overrides})


async def prepare(s: Settings) -> None:
    client: AsyncMongoClient = AsyncMongoClient(s.mongodb_uri)  # type: ignore[type-arg]
    now = time.time()
    badge = BadgeDefinition.model_validate({
        "id": "bench", "orgId": ORG, "startOn": now - 86400, "expiresOn": now + 86400 * 365,
        "earnedBadgeExpiry": {"expiryType": "RELATIVE", "relativeExpirytype": "DAYS", "value": 30},
        "customerConstraints": [{"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 1000}],
        "badgeConstraints": [
            {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "maxEarnLimit": 10**9},
            {"constraintType": "BADGE_ROLLING_WINDOW", "rollType": "WEEKS", "rollValue": 1, "maxEarnLimit": 10**9}],
    })
    await Repositories(client[s.mongodb_database]).upsert_badge(badge)
    await client.close()


def bodies(n: int, customers: int, tag: str) -> list[dict[str, object]]:
    return [{"orgId": ORG, "requestId": f"{tag}-{i}", "badgeMetaId": "bench", "customerId": 1_000_000 + i % customers}
            for i in range(n)]


async def drain(s: Settings, n: int, customers: int) -> float:
    await prepare(s)
    async with Collector(s) as collector, Publisher(s) as pub:
        coords = await pub.send_many(s.topic_earns, bodies(n, customers, "d"))
        worker = Worker(s)
        started = time.perf_counter()
        task = asyncio.create_task(worker.run())
        await collector.wait_for(coords, 1800)
        elapsed = time.perf_counter() - started
        worker.stop()
        await task
    return elapsed


async def latency(s: Settings, n: int, rate: float, customers: int) -> tuple[float, float]:
    await prepare(s)
    async with Collector(s) as collector, Publisher(s) as pub:
        worker = Worker(s)
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(5)  # group join and partition assignment are not part of the latency

        async def keep_polling() -> None:  # outcomes are timed when they arrive, not after publishing
            while True:
                await collector.poll(100)

        poller = asyncio.create_task(keep_polling())
        coords = []
        all_bodies = bodies(n, customers, "l")
        for chunk_start in range(0, n, 10):
            coords += await pub.send_many(s.topic_earns, all_bodies[chunk_start:chunk_start + 10])
            await asyncio.sleep(10 / rate)
        poller.cancel()
        seen = await collector.wait_for(coords, 600)
        worker.stop()
        await task
    lat = sorted((seen[c].received_at - pub.sent_at[c]) * 1000 for c in coords)
    return statistics.median(lat), lat[min(len(lat) - 1, int(len(lat) * 0.99))]


async def measure(name: str, s: Settings, n: int, latency_n: int, rate: float, customers: int) -> Figures:
    seconds = await drain(fresh(s), n, customers)
    p50, p99 = await latency(fresh(s), latency_n, rate, customers)
    return Figures(name, n, seconds, p50, p99)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--earns", type=int, default=10_000, help="earns drained by the batched worker")
    parser.add_argument("--naive-earns", type=int, default=1_000, help="earns drained by the naive worker")
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--latency-earns", type=int, default=2_000)
    parser.add_argument("--rate", type=float, default=200.0, help="earns/s published in the latency phase")
    args = parser.parse_args()
    base = Settings()
    logs.configure("WARNING")
    batched = await measure("batched", base, args.earns, args.latency_earns, args.rate, args.customers)
    naive_settings = base.model_copy(update={"batch_max_records": 1, "concurrency": 1})
    naive = await measure("naive", naive_settings, args.naive_earns, min(args.latency_earns, 200),
                          min(args.rate, 20.0), args.customers)
    print(f"{'worker':<8} {'earns':>7} {'seconds':>8} {'earns/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for f in (batched, naive):
        print(f"{f.name:<8} {f.earns:>7} {f.seconds:>8.2f} {f.rate:>9.1f} {f.p50_ms:>8.1f} {f.p99_ms:>8.1f}")
    print(f"throughput ratio batched/naive: {batched.rate / naive.rate:.1f}x")
    print(f"latency phase: batched at {args.rate:.0f}/s, naive at {min(args.rate, 20.0):.0f}/s")


if __name__ == "__main__":
    asyncio.run(main())
