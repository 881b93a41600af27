"""What the worker reads from MongoDB, counted with PyMongo's command monitoring.

- The earn hot path reads nothing per earn: a batch of first deliveries costs the badge
  definition (cached) and the counter watermark (once per badge and process), whatever its size.
- Every query shape the worker issues (filter fields, sort) is served by an index that
  `ensure_indexes` creates, so that on real MongoDB nothing scans (FerretDB v1 scans anyway).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from pymongo import AsyncMongoClient, monitoring
from redis.asyncio import Redis

from badge_worker import constants as K
from badge_worker.adapters.mongo import EQUALITY_FINDS_MAX, REUSED_BLOCKS_MAX, Repositories, ignores_indexes
from badge_worker.adapters.redis_store import RedisStore
from badge_worker.adapters.request_cache import RequestCache
from badge_worker.domain.commands import Stream
from badge_worker.service import counters
from badge_worker.service.messages import InputRecord
from badge_worker.service.processor import Processor
from badge_worker.settings import Settings
from tests.integration.helpers import ORG, live_badge, load
from tests.integration.shapes import Shapes, indexes_of, served


def record(offset: int, body: dict[str, Any]) -> InputRecord:
    return InputRecord("t.earns", 0, offset, None, json.dumps(body).encode(), (), int(time.time() * 1000),
                       Stream.EARNS)


def monitored_processor(client: AsyncMongoClient[dict[str, Any]], settings: Settings,
                        redis_client: Redis) -> Processor:
    """A real Processor whose MongoDB client is `client` (the one with a command listener)."""
    repos = Repositories(client[settings.mongodb_database])
    return Processor(repos, RedisStore(redis_client, settings.redis_key_prefix),
                     RequestCache(redis_client, settings.redis_key_prefix), badge_cache_ttl=60)


async def test_the_earn_hot_path_reads_nothing_per_earn(
        settings: Settings, mongo: Repositories, redis_client: Redis) -> None:
    await load(mongo, live_badge("hot-b", customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 1}], badgeConstraints=[
        {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "refreshRate": 1, "maxEarnLimit": 10**6},
        {"constraintType": "BADGE_ROLLING_WINDOW", "rollType": "WEEKS", "rollValue": 1, "maxEarnLimit": 10**6}]))
    shapes = Shapes()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri, event_listeners=[shapes])
    try:
        processor = monitored_processor(client, settings, redis_client)
        first = await processor.process_batch(
            [record(i, {"orgId": ORG, "requestId": f"h{i}", "badgeMetaId": "hot-b", "customerId": 1 + i // 2})
             for i in range(300)])
        first_reads = shapes.reads()
        shapes.seen.clear()
        second = await processor.process_batch(
            [record(300 + i, {"orgId": ORG, "requestId": f"g{i}", "badgeMetaId": "hot-b", "customerId": 500 + i})
             for i in range(300)])
        second_reads = shapes.reads()
    finally:
        await client.close()
    assert sorted({r.code for r in first}) == [200, 830]  # accepted and refused earns both ran
    assert {r.code for r in second} == {200}
    # Once per badge for 300 earns: its definition and claims, its counter watermark, and (its
    # counters are not in Redis yet) the rebuild's reads of what holds its limits.
    assert len(first_reads) <= 8, first_reads
    assert {c for _, c, _, _ in first_reads} <= {"badges", "badge_claims", "counter_marks", "earned_badges",
                                                 "earn_rejections", "earn_intents"}, first_reads
    assert all(fields in (("_id",), ("_id", "orgId"), ("badgeMetaId", "orgId")) for _, _, fields, _ in first_reads)
    assert second_reads == []  # warm: not one read for 300 more


async def test_every_query_the_worker_issues_is_served_by_an_index_it_creates(
        settings: Settings, mongo: Repositories, redis_client: Redis) -> None:
    await load(mongo, live_badge("shape-b", customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 1}], badgeConstraints=[
        {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "refreshRate": 1, "maxEarnLimit": 10**6}]),
        live_badge("shape-i", earnType="ISSUE_EARN", issuedBadgeExpiry={"expiryType": "NEVER"}))
    shapes = Shapes()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri, event_listeners=[shapes])
    try:
        repos = Repositories(client[settings.mongodb_database])
        store = RedisStore(redis_client, settings.redis_key_prefix)
        cache = RequestCache(redis_client, settings.redis_key_prefix)
        processor = Processor(repos, store, cache, badge_cache_ttl=0.0)
        bodies: list[dict[str, Any]] = []
        for c in range(20):
            bodies += [{"orgId": ORG, "requestId": f"e{c}a", "badgeMetaId": "shape-b", "customerId": 700 + c},
                       {"orgId": ORG, "requestId": f"e{c}b", "badgeMetaId": "shape-b", "customerId": 700 + c},
                       {"type": "issue", "orgId": ORG, "requestId": f"i{c}", "badgeMetaId": "shape-i",
                        "customerId": 700 + c},
                       {"type": "earn", "orgId": ORG, "requestId": f"ie{c}", "badgeMetaId": "shape-i",
                        "customerId": 700 + c}]
        bodies += [{"type": "claim", "orgId": ORG, "requestId": "cl1", "badgeMetaId": "shape-b",
                    "ownerType": "LOYALTY", "referenceId": "prog-1"}]
        batch = [record(i, b) for i, b in enumerate(bodies)]
        first = await processor.process_batch(batch)
        await processor.process_batch(batch)  # as after a stop: no outcome cached (the resume reads)
        earned = [r.outcome["data"]["earnedBadgeId"] for r in first
                  if r.ok and r.outcome["data"] and "earnedBadgeId" in r.outcome["data"]]
        more = [{"type": "revokeEarn", "orgId": ORG, "requestId": "re1", "badgeMetaId": "shape-b",
                 "customerId": 700, "earnedBadgeId": earned[0]},
                {"type": "revokeIssue", "orgId": ORG, "requestId": "ri1", "badgeMetaId": "shape-i",
                 "customerId": 701}]
        await processor.process_batch([record(100 + i, b) for i, b in enumerate(more)])
        # Redis lost everything: the batch comes again (the ledger and resume reads), then the
        # counters are rebuilt from MongoDB (held earns, rejections, intents)
        keys = [k async for k in redis_client.scan_iter(match=f"{settings.redis_key_prefix}:*", count=1000)]
        await redis_client.delete(*keys)
        await processor.process_batch(batch)
        await processor.process_batch([record(200, {"orgId": ORG, "requestId": "late", "badgeMetaId": "shape-b",
                                                    "customerId": 999})])
        await counters.check_badge(store, repos, ORG, "shape-b")
        await repos.badge_ids(ORG)
    finally:
        await client.close()
    indexes = await indexes_of(mongo)
    assert shapes.seen, "nothing was recorded"
    collections = {c for _, c, _, _ in shapes.seen}
    assert {"badges", "earned_badges", "earn_intents", "requests"} <= collections, collections
    assert {c for _, c, fields, _ in shapes.seen if fields == (K.ORIGIN_BLOCK_FIELD,)} == {
        "requests", "outcomes", "earned_badges", "earn_intents", "earn_rejections"}, shapes.seen
    unserved = sorted({(name, coll, fields, sort) for name, coll, fields, sort in shapes.seen
                       if not served(fields, sort, indexes.get(coll, []))})
    assert unserved == [], f"queries without an index: {unserved}; indexes: {indexes}"


class Finds(monitoring.CommandListener):
    """The requestIds each find asked a collection about (its `requestId: {$in}` filter), the
    origin blocks, and every filter."""

    def __init__(self) -> None:
        self.asked: dict[str, set[str]] = {}
        self.count: Counter[str] = Counter()  # finds by requestId or _id, per collection
        self.blocks: dict[str, list[str]] = {}  # finds by origin block, per collection
        self.finds: dict[str, list[dict[str, Any]]] = {}  # every find's filter, per collection

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name != "find":
            return
        flt = event.command.get("filter") or {}
        self.finds.setdefault(str(event.command["find"]), []).append(dict(flt))
        wanted = flt.get("requestId")
        ids = wanted.get("$in", []) if isinstance(wanted, dict) else [wanted] if wanted is not None else []
        if wanted is not None or "_id" in flt:
            self.count[str(event.command["find"])] += 1
        if K.ORIGIN_BLOCK_FIELD in flt:
            self.blocks.setdefault(str(event.command["find"]), []).append(str(flt[K.ORIGIN_BLOCK_FIELD]))
        self.asked.setdefault(str(event.command["find"]), set()).update(str(i) for i in ids)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_a_restart_reads_each_collection_once_for_the_whole_batch(
        settings: Settings, mongo: Repositories, redis_client: Redis) -> None:
    """A worker killed after storing the outcomes of 30 earns (not yet cached in Redis) and
    before storing those of 10 more: the restarted worker reads each collection once for all
    40, by the block of their offsets and side by side — the ledger, the outcomes, earned
    badges, intents and rejections (read one after the other they held a restart's first
    batches for seconds on FerretDB), none by requestId — and answers the 30 from their stored
    outcomes, the 10 by redoing them."""
    await load(mongo, live_badge("resume-b", customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 1}]))
    finds = Finds()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri, event_listeners=[finds])
    try:
        repos = Repositories(client[settings.mongodb_database])
        store = RedisStore(redis_client, settings.redis_key_prefix)
        cache = RequestCache(redis_client, settings.redis_key_prefix)
        # customers 0..19 earn twice each: the first fits, the second is refused (830)
        batch = [record(i, {"orgId": ORG, "requestId": f"r{i}", "badgeMetaId": "resume-b",
                            "customerId": 1000 + i % 20}) for i in range(40)]
        first = await Processor(repos, store, cache, badge_cache_ttl=60).process_batch(batch)
        await repos.ledger_store_outcomes((r.ledger, r.outcome, r.record.origin) for r in first[:30]
                                          if r.ledger is not None)
        finds.asked.clear()
        again = await Processor(repos, store, cache, badge_cache_ttl=60).process_batch(batch)
    finally:
        await client.close()
    assert {r.code for r in first} == {200, 830}
    assert [r.outcome for r in again] == [r.outcome for r in first]  # the same answers, stored or redone
    collections = ("requests", "outcomes", "earned_badges", "earn_intents", "earn_rejections")
    assert {c: finds.blocks.get(c) for c in collections} == {c: ["t.earns/0/0"] for c in collections}
    assert not any(finds.asked.values()) and not set(finds.count) & set(collections), (finds.asked, finds.count)
    assert [r.replayed for r in again[:30]] == [True] * 30  # answered from the stored outcome
    assert not any(r.replayed for r in again[30:])  # redone: their state had no outcome


async def test_reused_request_ids_read_only_the_ledger(
        settings: Settings, mongo: Repositories, redis_client: Redis) -> None:
    """Other messages reusing the requestIds of 20 earns (no restart), 10 of them decided (an
    outcome stored) and 10 not (their worker stopped before storing it): the worker confirms
    each reuse in the ledger, with one find by the origin block of the first users (which the
    cache names), and reads neither the outcomes nor the per-command collections (the first
    user's state does not change a reuse's answer, 809)."""
    await load(mongo, live_badge("reuse-b"))
    finds = Finds()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri, event_listeners=[finds])
    try:
        processor = monitored_processor(client, settings, redis_client)
        bodies = [{"orgId": ORG, "requestId": f"u{i}", "badgeMetaId": "reuse-b", "customerId": 2000 + i}
                  for i in range(20)]
        first = await processor.process_batch([record(i, b) for i, b in enumerate(bodies)])
        await processor.repos.ledger_store_outcomes((r.ledger, r.outcome, r.record.origin) for r in first[:10]
                                                    if r.ledger is not None)
        finds.asked.clear()
        finds.count.clear()
        reused = await processor.process_batch([record(500 + i, b) for i, b in enumerate(bodies)])
    finally:
        await client.close()
    assert [r.code for r in first] == [200] * 20
    assert [r.code for r in reused] == [809] * 20
    # confirmed in the ledger by the block of the first users' offsets, not by requestId
    assert finds.blocks == {"requests": ["t.earns/0/0"]}, finds.blocks
    assert not any(finds.asked.values()) and not finds.count, (finds.asked, finds.count)


async def test_a_cache_naming_another_first_user_is_checked_against_the_ledger_and_resumed(
        settings: Settings, mongo: Repositories, redis_client: Redis) -> None:
    """Redis names another message as the first user of 12 requestIds (restored from an
    older copy, say), but the ledger says it was this message, stopped before its outcomes
    were stored: the ledger wins, what the earns wrote is read, and the earns resume with the
    answers they had (no second earned badge), the cache put right."""
    await load(mongo, live_badge("own-b", customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 1}]))
    store = RedisStore(redis_client, settings.redis_key_prefix)
    cache = RequestCache(redis_client, settings.redis_key_prefix)
    batch = [record(i, {"orgId": ORG, "requestId": f"w{i}", "badgeMetaId": "own-b", "customerId": 3000 + i % 6})
             for i in range(12)]
    first = await Processor(mongo, store, cache, badge_cache_ttl=60).process_batch(batch)
    for i in range(12):
        await redis_client.set(cache.request_key(ORG, f"w{i}"), "t.earns/0/999")
    finds = Finds()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri, event_listeners=[finds])
    try:
        again = await monitored_processor(client, settings, redis_client).process_batch(batch)
    finally:
        await client.close()
    assert sorted({r.code for r in first}) == [200, 830]
    assert [r.outcome for r in again] == [r.outcome for r in first]
    assert await mongo.earned.count_documents({"orgId": ORG, "badgeMetaId": "own-b"}) == 6
    # one read of each collection for the 12 (a Resume that knew nothing would read per earn)
    assert {c: finds.count[c] for c in ("requests", "outcomes", "earned_badges", "earn_intents")} == {
        "requests": 1, "outcomes": 1, "earned_badges": 1, "earn_intents": 1}, finds.count
    assert {await redis_client.get(cache.request_key(ORG, f"w{i}")) for i in range(12)} == {
        r.origin.encode() for r in batch}


async def test_on_ferretdb_v1_only_the_unique_indexes_are_created(mongo: Repositories) -> None:
    """FerretDB v1 serves no find from an index, so ensure_indexes leaves out the others there
    (each would cost every insert); MongoDB gets every index of index_models()."""
    info = await mongo.db.client.admin.command("buildInfo")
    # (a collection nothing was written to yet lists no index, not even _id's)
    created = {c.name: {"_id_"} | {ix["name"] async for ix in await c.list_indexes()} for c in mongo.index_models()}
    declared = {c.name: {m.document["name"] for m in models} for c, models in mongo.index_models().items()}
    unique = {c.name: {m.document["name"] for m in models if m.document.get("unique")}
              for c, models in mongo.index_models().items()}
    if ignores_indexes(info):
        assert created == {name: {"_id_"} | unique[name] for name in declared}, created
        assert unique["earned_badges"] == {"org_request"} and "origin_block" in declared["earned_badges"]
    else:
        assert created == {name: {"_id_"} | declared[name] for name in declared}, created


async def test_where_every_find_scans_a_few_keys_are_read_by_equality_and_give_the_same_state(
        settings: Settings, mongo: Repositories, redis_client: Redis) -> None:
    """FerretDB v1 filters an equality in PostgreSQL but decodes every document for an `$in`:
    there, up to EQUALITY_FINDS_MAX keys are read with one equality find each (per collection),
    more with one `$in`. Both give the state the `$in` read gives (the store's kind is set by
    hand, so MongoDB runs the same finds)."""
    await load(mongo, live_badge("eq-b", customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 1}]),
        live_badge("eq-i", earnType="ISSUE_EARN", issuedBadgeExpiry={"expiryType": "NEVER"}))
    assert mongo.scans_every_find == ignores_indexes(await mongo.db.client.admin.command("buildInfo"))
    processor = Processor(mongo, RedisStore(redis_client, settings.redis_key_prefix),
                          RequestCache(redis_client, settings.redis_key_prefix), badge_cache_ttl=60)
    bodies: list[dict[str, Any]] = []
    for c in range(25):  # customers earn twice (the second refused) and are issued a badge
        bodies += [{"orgId": ORG, "requestId": f"q{c}a", "badgeMetaId": "eq-b", "customerId": 800 + c},
                   {"orgId": ORG, "requestId": f"q{c}b", "badgeMetaId": "eq-b", "customerId": 800 + c},
                   {"type": "issue", "orgId": ORG, "requestId": f"q{c}i", "badgeMetaId": "eq-i", "customerId": 800 + c}]
    first = await processor.process_batch([record(i, b) for i, b in enumerate(bodies)])
    revokes = [{"type": "revokeIssue", "orgId": ORG, "requestId": f"q{c}r", "badgeMetaId": "eq-i",
                "customerId": 800 + c} for c in range(3)]
    await processor.process_batch([record(100 + i, b) for i, b in enumerate(revokes)])
    assert {r.code for r in first} == {200, 830}
    await mongo.ledger_store_outcomes((r.ledger, r.outcome, r.record.origin) for r in first[:20]
                                      if r.ledger is not None)
    filters = Finds()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri, event_listeners=[filters])
    try:
        by_in = Repositories(client[settings.mongodb_database])
        by_equality = Repositories(client[settings.mongodb_database])
        by_equality.scans_every_find = True
        every = [(ORG, b["requestId"]) for b in bodies + revokes]
        few = every[16:26] + every[-3:]  # earns with and without outcomes, issues, revokes
        many = every[:EQUALITY_FINDS_MAX + 8]
        for keys in (few, many):
            filters.finds.clear()
            expected = await by_in.prefetch_resume(keys, ["earn", "issue"], restart=True)
            in_finds = dict(filters.finds)
            filters.finds.clear()
            state = await by_equality.prefetch_resume(keys, ["earn", "issue"], restart=True)
            assert comparable(state) == comparable(expected), keys
            if keys is few:
                assert state.ledger and state.outcomes and state.earned and state.intents and state.rejected
                assert state.issues and state.revoked_issues
            read = filters.finds
            assert all(any("$in" in str(v) for v in f.values()) for fs in in_finds.values() for f in fs), in_finds
            by_value = [f for fs in read.values() for f in fs if not any("$in" in str(v) for v in f.values())]
            if keys is few:
                assert len(read["requests"]) == len(few) and by_value == [f for fs in read.values() for f in fs]
                assert len(read["outcomes"]) == len(state.ledger), read["outcomes"]
            else:
                assert by_value == [] and len(read["requests"]) == 1, read
    finally:
        await client.close()


def comparable(state: Any) -> dict[str, Any]:
    return {name: getattr(state, name) for name in ("keys", "ledger", "outcomes", "earned", "intents", "rejected",
                                                    "issues", "revoked_issues")}


async def test_reuses_of_first_users_in_many_blocks_are_read_by_request_id(
        settings: Settings, mongo: Repositories, redis_client: Redis) -> None:
    """First users spread over more origin blocks than REUSED_BLOCKS_MAX: their reuses are
    confirmed by requestId instead (one read, not a find per block), and still answered 809."""
    await load(mongo, live_badge("spread-b"))
    finds = Finds()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri, event_listeners=[finds])
    try:
        processor = monitored_processor(client, settings, redis_client)
        bodies = [{"orgId": ORG, "requestId": f"s{i}", "badgeMetaId": "spread-b", "customerId": 2500 + i}
                  for i in range(REUSED_BLOCKS_MAX + 2)]
        first = await processor.process_batch([record(i * K.ORIGIN_BLOCK_OFFSETS, b) for i, b in enumerate(bodies)])
        finds.asked.clear()
        finds.blocks.clear()
        reused = await processor.process_batch([record(90_000 + i, b) for i, b in enumerate(bodies)])
    finally:
        await client.close()
    assert [r.code for r in first] == [200] * len(bodies)
    assert [r.code for r in reused] == [809] * len(bodies)
    assert finds.asked.get("requests") == {b["requestId"] for b in bodies} and not finds.blocks, finds.blocks
