"""Many workers on the cluster stack (3 Kafka brokers with RF 3 / min ISR 2, a Redis Cluster
of 3 primaries + 3 replicas), and faults in it: a broker SIGKILLed, a Redis primary
SIGKILLed (its replica promoted), a badge's slot migrated while earns run, workers joining
and leaving. Each test asserts exactly one outcome per command and that no limit is overrun,
both in the outcomes and in MongoDB's earned badges.

The workload has two badges whose outcome counts do not depend on the order of the earns:
`cap` lets each customer earn 3 times (5 attempts each: 3 accepted, 2 refused with 830) and
`pool` lets 1 in 4 customers in (one attempt each: a badge lifetime cap, the rest 831)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from badge_worker.adapters.kafka_io import ensure_topics
from badge_worker.adapters.mongo import Repositories
from badge_worker.client import Collector, Coord, Publisher
from badge_worker.settings import Settings
from tests.conftest import WorkerProcess
from tests.integration import cluster
from tests.integration.cluster import cluster_settings  # noqa: F401 - the session fixture
from tests.integration.helpers import ORG, live_badge, load
from tests.integration.test_resilience import settle, wait_count

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PER_CUSTOMER = 3  # lifetime cap of `cap` per customer
ATTEMPTS = 5  # earns per customer of `cap`


@dataclass
class Workload:
    cap_customers: int
    pool_customers: int

    @property
    def pool_cap(self) -> int:
        return self.pool_customers // 4

    def bodies(self, tag: str) -> list[dict[str, Any]]:
        """Interleaved, so that both badges are busy all along the stream."""
        cap = [{"orgId": ORG, "requestId": f"{tag}c{c}-{k}", "badgeMetaId": "cap", "customerId": 100_000 + c}
               for k in range(ATTEMPTS) for c in range(self.cap_customers)]
        pool = [{"orgId": ORG, "requestId": f"{tag}p{c}", "badgeMetaId": "pool", "customerId": 500_000 + c}
                for c in range(self.pool_customers)]
        out: list[dict[str, Any]] = []
        ratio = max(1, len(cap) // max(1, len(pool)))
        while cap or pool:
            out.extend(cap[:ratio])
            del cap[:ratio]
            if pool:
                out.append(pool.pop())
        return out

    def expected(self) -> Counter[int]:
        accepted = self.cap_customers * PER_CUSTOMER + self.pool_cap
        return Counter({200: accepted, 830: self.cap_customers * (ATTEMPTS - PER_CUSTOMER),
                        831: self.pool_customers - self.pool_cap})

    def __len__(self) -> int:
        return self.cap_customers * ATTEMPTS + self.pool_customers


@pytest.fixture
async def on_cluster(cluster_settings: Settings) -> AsyncIterator[tuple[Settings, Repositories]]:  # noqa: F811
    s = cluster.with_unique_names(cluster_settings, topic_partitions=8, batch_max_records=200,
                                  backoff_initial_s=0.2, backoff_max_s=2.0)
    await cluster.wait_cluster_ok(60)
    await ensure_topics(s)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(s.mongodb_uri)
    repos = Repositories(client[s.mongodb_database])
    await repos.ensure_indexes()
    await load(repos, live_badge("cap", customerConstraints=[{"constraintType": "CUSTOMER_BADGE_FIXED_VALUE",
                                                              "maxEarnLimit": PER_CUSTOMER}]))
    try:
        yield s, repos
    finally:
        with contextlib.suppress(Exception):
            await client.drop_database(s.mongodb_database)
        await client.close()
        await drop_keys(s)


async def drop_keys(s: Settings) -> None:
    """This test's Redis keys, on every primary: left behind, they pile up run after run and
    slow every later failover and resync (a full copy of a primary to its replica)."""
    for node in await cluster.redis_nodes():
        if node.role != "master" or node.failed:
            continue
        with contextlib.suppress(Exception):
            client = Redis(host="127.0.0.1", port=node.port)
            try:
                keys = [k async for k in client.scan_iter(match=f"{s.redis_key_prefix}:*", count=1000)]
                for key in keys:  # one by one: keys of different slots (UNLINK of many must share one)
                    await client.unlink(key)
            finally:
                await client.aclose()


async def set_pool_cap(repos: Repositories, cap: int) -> None:
    """The `pool` badge, capped at `cap` earns in all."""
    await load(repos, live_badge("pool", badgeConstraints=[{"constraintType": "BADGE_FIXED_VALUE",
                                                            "maxEarnLimit": cap}]))


async def check_exactly_once_and_limits(collector: Collector, coords: list[Coord], work: Workload,
                                        repos: Repositories) -> dict[str, Any]:
    counts = collector.count_by_input()
    per_input = Counter(counts.get(c, 0) for c in coords)
    assert per_input == Counter({1: len(coords)}), f"inputs by number of outcomes: {per_input}"
    first: dict[Coord, Any] = {}
    for o in collector.outcomes:
        first.setdefault(o.input, o)
    codes = Counter(first[c].code for c in coords)
    assert codes == work.expected(), f"codes {codes} != {work.expected()}"
    # the truth in MongoDB: no customer above its cap, the pool not above its cap
    active = await repos.earned.find({"status": "ACTIVE"}, {"badgeMetaId": 1, "customerId": 1}).to_list()
    per_customer = Counter(d["customerId"] for d in active if d["badgeMetaId"] == "cap")
    assert max(per_customer.values()) == PER_CUSTOMER and len(per_customer) == work.cap_customers
    assert sum(1 for d in active if d["badgeMetaId"] == "pool") == work.pool_cap
    assert len(active) == codes[200]
    assert await repos.earned.count_documents({"status": "PENDING"}) == 0
    return {"outcomes": len(coords), "codes": dict(codes)}


def start_workers(s: Settings, log: Path, n: int, started: list[WorkerProcess]) -> list[WorkerProcess]:
    made = [WorkerProcess(s, log).start() for _ in range(n)]
    started.extend(made)
    return made


def assert_alive(workers: list[WorkerProcess], log: Path) -> None:
    dead = [w.proc.returncode for w in workers if w.proc is not None and w.proc.poll() is not None]
    assert not dead, f"worker processes exited ({dead}); log tail:\n{log.read_text()[-3000:]}"


def report(name: str, figures: dict[str, Any]) -> None:
    print(f"\n[cluster] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


async def test_four_workers_twenty_thousand_tight_commands_exactly_once(
        on_cluster: tuple[Settings, Repositories], worker_processes: list[WorkerProcess], tmp_path: Path) -> None:
    s, repos = on_cluster
    work = Workload(cap_customers=2_000, pool_customers=10_000)  # 20,000 commands
    await set_pool_cap(repos, work.pool_cap)
    log = tmp_path / "workers.log"
    workers = start_workers(s, log, 4, worker_processes)
    async with Collector(s) as collector, Publisher(s) as pub:
        started = time.monotonic()
        coords = await pub.send_many(s.topic_earns, work.bodies("w4"))
        await collector.wait_for(coords, 600)
        seconds = time.monotonic() - started
        await settle(collector)
    assert len(coords) == 20_000
    assert_alive(workers, log)
    figures = await check_exactly_once_and_limits(collector, coords, work, repos)
    report("4 workers", {**figures, "seconds": round(seconds, 1), "earns_per_s": round(len(coords) / seconds)})


async def test_a_broker_sigkilled_mid_stream_loses_and_duplicates_nothing(
        on_cluster: tuple[Settings, Repositories], worker_processes: list[WorkerProcess], tmp_path: Path) -> None:
    s, repos = on_cluster
    work = Workload(cap_customers=800, pool_customers=2_000)  # 6,000 commands
    await set_pool_cap(repos, work.pool_cap)
    log = tmp_path / "workers.log"
    workers = start_workers(s, log, 2, worker_processes)
    async with Collector(s) as collector, Publisher(s) as pub:
        publishing = asyncio.create_task(pub.send_many(s.topic_earns, work.bodies("bk")))
        await wait_count(collector, 1_000, 300)
        leaders = await cluster.partition_leaders([s.topic_earns])
        victim = max((n for n in leaders if n > 0), key=lambda n: len(leaders[n]))  # leads the most input partitions
        cluster.kill_broker(victim)
        killed_at = len(collector.outcomes)
        fenced_s = await cluster.wait_broker_gone(victim, 60)
        await wait_count(collector, killed_at + 1_000, 300)  # progress on two brokers
        down_outcomes = len(collector.outcomes) - killed_at
        coords = await publishing
        await cluster.start_broker(victim)
        await collector.wait_for(coords, 600)
        await settle(collector)
    assert killed_at < len(coords)
    assert_alive(workers, log)
    figures = await check_exactly_once_and_limits(collector, coords, work, repos)
    report("broker SIGKILL", {**figures, "killed_node": victim, "killed_after": killed_at,
                              "leaders_moved_s": round(fenced_s, 1), "outcomes_while_down": down_outcomes})


async def promoted_in_place(replica_port: int, slots: list[tuple[int, int]], timeout: float) -> float:
    """Seconds until the replica on `replica_port` is a primary serving `slots`."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(Exception):  # nodes of a cluster in transition
            me = next(n for n in await cluster.redis_nodes(replica_port) if n.port == replica_port)
            if me.role == "master" and me.slots == slots:
                return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"{replica_port} not promoted in {timeout}s"
        await asyncio.sleep(0.1)


async def test_a_redis_primary_sigkilled_mid_stream_keeps_every_limit(
        on_cluster: tuple[Settings, Repositories], worker_processes: list[WorkerProcess], tmp_path: Path) -> None:
    s, repos = on_cluster
    work = Workload(cap_customers=800, pool_customers=2_000)
    await set_pool_cap(repos, work.pool_cap)
    owner = await cluster.owner_of(f"{{{ORG}:cap}}")  # the primary serving the `cap` badge's counters
    log = tmp_path / "workers.log"
    workers = start_workers(s, log, 2, worker_processes)
    async with Collector(s) as collector, Publisher(s) as pub:
        publishing = asyncio.create_task(pub.send_many(s.topic_earns, work.bodies("rk")))
        await wait_count(collector, 1_500, 300)
        replica = next(n for n in await cluster.redis_nodes() if n.master_id == owner.node_id)
        cluster.kill_redis(owner.port)
        killed_at = len(collector.outcomes)
        failover_s = await promoted_in_place(replica.port, owner.slots, 60)
        promoted = replica.port
        coords = await publishing
        await collector.wait_for(coords, 600)
        await settle(collector)
    await cluster.start_redis(owner.port, promote=True)  # the old primary back, roles as before
    assert killed_at < len(coords)
    assert_alive(workers, log)
    figures = await check_exactly_once_and_limits(collector, coords, work, repos)
    rebuilds = log.read_text().count('"counters_need_rebuild"')
    assert rebuilds >= 1  # the promoted replica has another run id: the badges' counters were rebuilt
    report("Redis primary SIGKILL", {**figures, "killed_port": owner.port, "promoted_port": promoted,
                                     "killed_after": killed_at, "failover_s": round(failover_s, 1),
                                     "counter_rebuilds_logged": rebuilds})


async def test_a_badge_slot_migrated_while_earns_run_keeps_every_limit(
        on_cluster: tuple[Settings, Repositories], worker_processes: list[WorkerProcess], tmp_path: Path) -> None:
    s, repos = on_cluster
    work = Workload(cap_customers=800, pool_customers=2_000)
    await set_pool_cap(repos, work.pool_cap)
    log = tmp_path / "workers.log"
    workers = start_workers(s, log, 2, worker_processes)
    moves = []
    async with Collector(s) as collector, Publisher(s) as pub:
        publishing = asyncio.create_task(pub.send_many(s.topic_earns, work.bodies("rs")))
        for threshold, badge in ((1_000, "cap"), (2_500, "pool"), (4_000, "cap")):
            await wait_count(collector, threshold, 300)
            tag = f"{{{ORG}:{badge}}}"
            source = await cluster.owner_of(tag)
            target = next(n for n in await cluster.redis_nodes()
                          if n.role == "master" and n.port != source.port and not n.failed)
            started = time.monotonic()
            slot = await cluster.reshard(tag, target.port)
            moves.append((badge, slot, source.port, target.port, round(time.monotonic() - started, 2),
                          len(collector.outcomes)))
        coords = await publishing
        await collector.wait_for(coords, 600)
        await settle(collector)
    assert all(m[-1] < len(coords) for m in moves), f"slots moved after the stream: {moves}"
    assert_alive(workers, log)
    figures = await check_exactly_once_and_limits(collector, coords, work, repos)
    report("reshard", {**figures, "moves(badge,slot,from,to,s,at)": moves})


async def test_workers_joining_and_leaving_mid_stream_exactly_once(
        on_cluster: tuple[Settings, Repositories], worker_processes: list[WorkerProcess], tmp_path: Path) -> None:
    s, repos = on_cluster
    work = Workload(cap_customers=800, pool_customers=2_000)
    await set_pool_cap(repos, work.pool_cap)
    log = tmp_path / "workers.log"
    first = start_workers(s, log, 2, worker_processes)
    async with Collector(s) as collector, Publisher(s) as pub:
        publishing = asyncio.create_task(pub.send_many(s.topic_earns, work.bodies("rb")))
        await wait_count(collector, 1_500, 300)
        joined = start_workers(s, log, 1, worker_processes)  # a third joins: partitions move to it
        joined_at = len(collector.outcomes)
        await wait_count(collector, joined_at + 1_500, 300)
        left_rc = first[0].terminate(90)  # one leaves: SIGTERM, it drains and commits
        left_at = len(collector.outcomes)
        coords = await publishing
        await collector.wait_for(coords, 600)
        await settle(collector)
    assert left_rc == 0
    assert left_at < len(coords)
    assert_alive([first[1], *joined], log)
    figures = await check_exactly_once_and_limits(collector, coords, work, repos)
    report("rebalance", {**figures, "joined_after": joined_at, "left_after": left_at})
