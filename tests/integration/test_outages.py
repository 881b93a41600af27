"""Outages are outages (issue 7 §2): a server that is out of memory, read-only, paused,
restarted or killed is never a message's fault. The worker pauses the partition, retries
the batch with backoff and resumes: every earn still gets exactly one outcome, none is a
500, nothing goes to the DLQ, and MongoDB holds exactly the accepted earns.

Each test breaks a PRIVATE server (tests/integration/private_servers.py) in the middle of
a stream, with the worker running in-process; the other servers are the shared stack (each
test with its own topics, group, key prefix and database).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import AIOKafkaConsumer
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from badge_worker.adapters.kafka_io import ensure_topics, partitions_of
from badge_worker.adapters.mongo import Repositories
from badge_worker.client import Collector, Coord, Outcome, Publisher
from badge_worker.metrics import REGISTRY
from badge_worker.settings import Settings
from tests.integration.helpers import ORG, live_badge, load, running_worker

if TYPE_CHECKING:
    from tests.integration.private_servers import PrivateRedis, PrivateServers

pytestmark = pytest.mark.slow
# its fixtures (private_servers, private_stack...); imported by pytest so that its asserts are rewritten
pytest_plugins = ["tests.integration.private_servers"]

CAP = 2  # earns per customer (lifetime)
TRIES = 3  # earns sent per customer: CAP accepted, the rest 830


def outage_badge(badge_id: str) -> Any:
    """Every earn takes three counters: a customer lifetime cap, a badge daily window and a
    badge rolling window (the last two wide enough never to refuse)."""
    return live_badge(
        badge_id,
        customerConstraints=[{"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": CAP}],
        badgeConstraints=[
            {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "refreshRate": 1,
             "maxEarnLimit": 1_000_000},
            {"constraintType": "BADGE_ROLLING_WINDOW", "rollType": "DAYS", "rollValue": 7,
             "maxEarnLimit": 1_000_000},
        ])


def earns(prefix: str, badge: str, customers: int, first_customer: int) -> list[dict[str, Any]]:
    """TRIES earns per customer, interleaved so that every batch holds several customers."""
    return [{"orgId": ORG, "requestId": f"{prefix}-{c}-{k}", "badgeMetaId": badge,
             "customerId": first_customer + c}
            for k in range(TRIES) for c in range(customers)]


def infra_retries() -> float:
    return REGISTRY.get_sample_value("badge_worker_infra_retries_total") or 0.0


async def wait_count(collector: Collector, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(collector.outcomes) < count:
        assert time.monotonic() < deadline, f"only {len(collector.outcomes)} of {count} outcomes"
        await collector.poll(100)


async def settle(collector: Collector, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await collector.poll(300)


async def read_dlq(settings: Settings) -> list[Any]:
    """Every committed record of the test's DLQ topic (its own topic: all of them are ours)."""
    tps = await partitions_of(settings, [settings.topic_dlq])
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                isolation_level="read_committed", enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                break
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records += batch
        return records
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def repositories(settings: Settings) -> AsyncIterator[Repositories]:
    """The test's database on whichever MongoDB the settings name; dropped afterwards."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri, serverSelectionTimeoutMS=20_000)
    repos = Repositories(client[settings.mongodb_database])
    await repos.ensure_indexes()
    try:
        yield repos
    finally:
        with contextlib.suppress(Exception):
            await client.drop_database(settings.mongodb_database)
        await client.close()


async def run_through_outage(settings: Settings, repos: Repositories, badge: str, *,
                             outage: Callable[[], Awaitable[None]], customers: int = 200,
                             break_after: int = 150, timeout: float = 90) -> dict[str, Any]:
    """Stream TRIES earns for each of `customers`; after `break_after` outcomes run `outage`
    (which breaks a server and repairs it); then check the whole stream's outcomes."""
    await load(repos, outage_badge(badge))
    bodies = earns(badge, badge, customers, first_customer=10_000)
    started = time.monotonic()
    retries_before = infra_retries()
    async with running_worker(settings), Collector(settings) as collector, Publisher(settings) as pub:
        # published in slices, so that the stream goes on during the outage
        async def publish() -> list[Coord]:
            coords: list[Coord] = []
            for i in range(0, len(bodies), 50):
                coords += await pub.send_many(settings.topic_earns, bodies[i : i + 50])
                await asyncio.sleep(0.05)
            return coords

        publishing = asyncio.create_task(publish())
        await wait_count(collector, break_after, timeout)
        broken_at = len(collector.outcomes)
        await outage()
        repaired_at = len(collector.outcomes)
        coords = await publishing
        seen = await collector.wait_for(coords, timeout)
        await settle(collector, 3)
    dlq = await read_dlq(settings)
    report = check_stream(collector.outcomes, coords, seen, customers)
    await check_store(repos, badge, seen, coords)
    assert not dlq, f"{len(dlq)} DLQ records: {[json.loads(r.value or b'null') for r in dlq[:3]]}"
    assert broken_at < len(bodies), "the outage came after the stream"
    report.update(broken_at=broken_at, repaired_at=repaired_at, infra_retries=infra_retries() - retries_before,
                  seconds=round(time.monotonic() - started, 1))
    print(f"outage {badge}: {report}")
    return report


def check_stream(outcomes: list[Outcome], coords: list[Coord], seen: dict[Coord, Outcome],
                 customers: int) -> dict[str, Any]:
    counts = Counter(o.input for o in outcomes)
    missing = [c for c in coords if counts[c] == 0]
    duplicated = [c for c in coords if counts[c] > 1]
    codes = Counter(seen[c].code for c in coords)
    assert not missing and not duplicated, f"missing {len(missing)}, duplicated {len(duplicated)}: {codes}"
    assert codes[500] == 0, f"{codes[500]} x 500: {[seen[c].body for c in coords if seen[c].code == 500][:3]}"
    assert codes == Counter({200: customers * CAP, 830: customers * (TRIES - CAP)}), codes
    return {"earns": len(coords), "codes": dict(codes)}


async def check_store(repos: Repositories, badge: str, seen: dict[Coord, Outcome], coords: list[Coord]) -> None:
    accepted = {seen[c].body["data"]["earnedBadgeId"] for c in coords if seen[c].code == 200}
    active = await repos.earned.find({"badgeMetaId": badge, "status": "ACTIVE"}, {"_id": 1}).to_list()
    assert {str(d["_id"]) for d in active} == accepted, "MongoDB's earned badges differ from the accepted earns"
    per_customer = Counter(d["customerId"] for d in
                           await repos.earned.find({"badgeMetaId": badge, "status": "ACTIVE"}).to_list())
    assert max(per_customer.values()) <= CAP


# ---------------------------------------------------------------- Redis


@pytest.fixture
def redis_settings(topics: Settings, private_servers: PrivateServers) -> tuple[Settings, PrivateRedis]:
    """The shared Kafka and MongoDB, a private Redis (noeviction, no persistence)."""
    redis = private_servers.redis()
    return topics.model_copy(update={"redis_url": redis.url}), redis


async def test_redis_out_of_memory_mid_stream(
        redis_settings: tuple[Settings, PrivateRedis], mongo: Repositories) -> None:
    s, redis = redis_settings
    admin = Redis.from_url(redis.url)
    retries: list[float] = []

    async def outage() -> None:
        before = infra_retries()
        await admin.config_set("maxmemory", "1")  # every write refused: OOM command not allowed
        await asyncio.sleep(4)
        retries.append(infra_retries() - before)
        await admin.config_set("maxmemory", "0")

    try:
        await run_through_outage(s, mongo, "oom-b", outage=outage)
    finally:
        await admin.aclose()
    assert retries[0] > 0, "the OOM was never seen as an outage"


async def test_redis_read_only_replica_mid_stream(
        redis_settings: tuple[Settings, PrivateRedis], mongo: Repositories) -> None:
    """A failover turns the node into a replica (READONLY); later it is a primary again."""
    s, redis = redis_settings
    admin = Redis.from_url(redis.url)
    retries: list[float] = []

    async def outage() -> None:
        before = infra_retries()
        await admin.replicaof("127.0.0.1", str(redis.free_port()))  # no primary there
        await asyncio.sleep(4)
        retries.append(infra_retries() - before)
        await admin.replicaof("NO", "ONE")

    try:
        await run_through_outage(s, mongo, "ro-b", outage=outage)
    finally:
        await admin.aclose()
    assert retries[0] > 0, "READONLY was never seen as an outage"


async def test_redis_client_pause_mid_stream(
        redis_settings: tuple[Settings, PrivateRedis], mongo: Repositories) -> None:
    """CLIENT PAUSE WRITE (commands wait) and then CLIENT PAUSE ALL for longer than the
    worker's Redis socket timeout (commands time out, scripts may run after the client gave up)."""
    s, redis = redis_settings
    admin = Redis.from_url(redis.url)

    async def outage() -> None:
        await admin.client_pause(5000, all=False)  # WRITE
        await asyncio.sleep(6)
        await admin.client_pause(12_000, all=True)
        await asyncio.sleep(13)

    try:
        await run_through_outage(s, mongo, "pause-b", outage=outage, customers=250, timeout=120)
    finally:
        await admin.aclose()


# ---------------------------------------------------------------- MongoDB / FerretDB


async def test_ferretdb_killed_and_restarted_mid_batch(
        topics: Settings, private_servers: PrivateServers, redis_client: Redis) -> None:
    ferretdb = private_servers.ferretdb()
    s = topics.model_copy(update={"mongodb_uri": ferretdb.uri})
    retries: list[float] = []

    async def outage() -> None:
        before = infra_retries()
        await ferretdb.astop(kill=True)  # kill -9 in the middle of a batch's writes
        # Down until the worker has seen it (bounded): a shorter outage can hide inside the
        # driver's own retry and server selection (5 s), which is fine but tests nothing.
        await asyncio.sleep(3)
        for _ in range(80):
            if infra_retries() != before:
                break
            await asyncio.sleep(0.25)
        retries.append(infra_retries() - before)
        await ferretdb.astart()  # same port, same SQLite files

    async with repositories(s) as repos:
        await run_through_outage(s, repos, "ferret-b", outage=outage)
    assert retries[0] > 0, "the MongoDB outage was never seen"


# ---------------------------------------------------------------- Kafka


async def test_broker_killed_and_restarted_mid_batch(
        settings: Settings, mongo: Repositories, private_servers: PrivateServers, redis_client: Redis) -> None:
    kafka = private_servers.kafka()
    s = settings.model_copy(update={"kafka_bootstrap_servers": kafka.bootstrap})
    await ensure_topics(s)

    async def outage() -> None:
        await kafka.astop(kill=True)  # kill -9: open transactions, unflushed logs
        await asyncio.sleep(2)
        await kafka.astart()

    await run_through_outage(s, mongo, "broker-b", outage=outage, timeout=120)
