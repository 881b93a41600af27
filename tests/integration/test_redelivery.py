"""A redelivered batch (a crash or a revoke between deciding and committing) is answered from
Redis: no MongoDB read, the same outcomes, no second effect."""

from __future__ import annotations

import json
import time
from typing import Any

from pymongo import AsyncMongoClient, monitoring
from redis.asyncio import Redis

from badge_worker import constants as K
from badge_worker.adapters.mongo import Repositories
from badge_worker.adapters.redis_store import RedisStore
from badge_worker.adapters.request_cache import RequestCache
from badge_worker.domain.commands import Stream
from badge_worker.service import messages
from badge_worker.service.messages import InputRecord
from badge_worker.service.processor import Processor
from badge_worker.settings import Settings
from tests.integration.helpers import ORG, live_badge, load


class Reads(monitoring.CommandListener):
    def __init__(self) -> None:
        self.commands: list[str] = []
        self.filters: list[tuple[str, dict[str, Any]]] = []  # (collection, filter) of the finds

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in ("find", "aggregate", "count"):
            self.commands.append(event.command_name)
            self.filters.append((event.command[event.command_name], dict(event.command.get("filter") or {})))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def record(offset: int, body: dict[str, Any]) -> InputRecord:
    return InputRecord("t.earns", 0, offset, None, json.dumps(body).encode(), (), int(time.time() * 1000),
                       Stream.EARNS)


async def test_a_redelivered_batch_reads_nothing_from_mongodb(
        settings: Settings, mongo: Repositories, redis_client: Redis) -> None:
    await load(mongo, live_badge("redeliver-b", customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 1}]))
    reads = Reads()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri, event_listeners=[reads])
    try:
        repos = Repositories(client[settings.mongodb_database])
        cache = RequestCache(redis_client, settings.redis_key_prefix)
        processor = Processor(repos, RedisStore(redis_client, settings.redis_key_prefix), cache,
                              badge_cache_ttl=60)
        # two earns per customer: one fits, one is refused (830)
        batch = [record(i, {"orgId": ORG, "requestId": f"r{i}", "badgeMetaId": "redeliver-b",
                            "customerId": 1 + i // 2}) for i in range(200)]
        first = await processor.process_batch(batch)
        # what the worker does before committing
        await cache.remember((r.outcome["orgId"], r.outcome["requestId"], r.outcome) for r in first)
        await repos.ledger_store_outcomes(messages.outcome_documents(messages.decided(first)))
        reads.commands.clear()
        again = await processor.process_batch(batch)  # the same records, delivered again
    finally:
        await client.close()
    assert reads.commands == []
    assert [r.outcome for r in again] == [r.outcome for r in first]
    assert all(r.replayed for r in again)
    assert sorted({r.code for r in first}) == [200, 830]
    assert await mongo.earned.count_documents({"badgeMetaId": "redeliver-b"}) == 100


async def test_a_batch_in_flight_at_a_crash_is_resumed_with_a_few_queries_not_one_per_record(
        settings: Settings, mongo: Repositories, redis_client: Redis) -> None:
    """The worker stopped after the effects but before the outcomes were stored: the records
    come again with no cached outcome. What MongoDB holds is read once per collection for the
    whole batch, and every command gets the answer its first run would have given."""
    await load(mongo, live_badge("resume-b", customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 1}]))
    await load(mongo, live_badge("resume-i", earnType="ISSUE_EARN",
                                 issuedBadgeExpiry={"expiryType": "NEVER"}))
    reads = Reads()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri, event_listeners=[reads])
    try:
        repos = Repositories(client[settings.mongodb_database])
        cache = RequestCache(redis_client, settings.redis_key_prefix)
        processor = Processor(repos, RedisStore(redis_client, settings.redis_key_prefix), cache,
                              badge_cache_ttl=60)
        bodies: list[dict[str, Any]] = []
        for c in range(60):
            bodies += [{"orgId": ORG, "requestId": f"e{c}a", "badgeMetaId": "resume-b", "customerId": 500 + c},
                       {"orgId": ORG, "requestId": f"e{c}b", "badgeMetaId": "resume-b", "customerId": 500 + c},
                       {"type": "issue", "orgId": ORG, "requestId": f"i{c}", "badgeMetaId": "resume-i",
                        "customerId": 500 + c}]
        batch = [record(i, b) for i, b in enumerate(bodies)]
        first = await processor.process_batch(batch)  # then "killed": no outcome stored anywhere
        reads.commands.clear()
        again = await processor.process_batch(batch)
    finally:
        await client.close()
    assert [r.outcome for r in again] == [r.outcome for r in first]
    assert sorted({r.code for r in first}) == [200, 830]
    assert len(reads.commands) <= 10, reads.commands  # one per collection, whatever the batch size
    assert await mongo.earned.count_documents({"badgeMetaId": "resume-b"}) == 60
    assert await mongo.issues.count_documents({"badgeMetaId": "resume-i"}) == 60


async def test_after_redis_lost_its_keys_a_redelivered_batch_still_reads_mongodb_once_per_collection(
        settings: Settings, mongo: Repositories, redis_client: Redis) -> None:
    await load(mongo, live_badge("lost-b", customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 1}]))
    reads = Reads()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri, event_listeners=[reads])
    try:
        repos = Repositories(client[settings.mongodb_database])
        cache = RequestCache(redis_client, settings.redis_key_prefix)
        processor = Processor(repos, RedisStore(redis_client, settings.redis_key_prefix), cache,
                              badge_cache_ttl=60)
        batch = [record(i, {"orgId": ORG, "requestId": f"l{i}", "badgeMetaId": "lost-b", "customerId": 1 + i // 2})
                 for i in range(200)]
        first = await processor.process_batch(batch)
        await repos.ledger_store_outcomes(messages.outcome_documents(messages.decided(first)))
        keys = [k async for k in redis_client.scan_iter(match=f"{settings.redis_key_prefix}:*", count=1000)]
        await redis_client.delete(*keys)  # Redis lost everything, counters included
        reads.commands.clear()
        again = await processor.process_batch(batch)
    finally:
        await client.close()
    assert [r.outcome for r in again] == [r.outcome for r in first]
    ledger_and_outcome_reads = len(reads.commands)
    assert ledger_and_outcome_reads <= 10, reads.commands
    # what the earns wrote is read by the block of their offsets, as for the earns the cache
    # knows were in flight: FerretDB filters that in PostgreSQL (a requestId $in has it decode
    # every document); the other reads are the rebuild of the lost counters, by badge
    resume_reads = {name: f for name, f in reads.filters if "badgeMetaId" not in f and "_id" not in f}
    by_block = {K.ORIGIN_BLOCK_FIELD: "t.earns/0/0"}
    assert resume_reads == {name: by_block for name in (K.REQUESTS, K.OUTCOMES, K.EARNED, K.INTENTS, K.REJECTIONS)}, \
        reads.filters
