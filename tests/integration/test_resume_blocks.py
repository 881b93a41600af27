"""A restart reads what the earns in flight wrote by the origin block of their messages
(adapters/mongo.py, _load_by_block), on a real MongoDB/FerretDB: the same state as the read
by requestId for every key it keeps, and a key it cannot vouch for is left to the per-key
reads."""

from __future__ import annotations

import json
import time
from typing import Any

from redis.asyncio import Redis

from badge_worker import constants as K
from badge_worker.adapters.mongo import Repositories, ResumeState, origin_block
from badge_worker.adapters.redis_store import RedisStore
from badge_worker.adapters.request_cache import RequestCache
from badge_worker.domain.commands import Stream
from badge_worker.service.messages import InputRecord
from badge_worker.service.processor import Processor
from badge_worker.settings import Settings
from tests.integration.helpers import ORG, live_badge, load


def record(offset: int, body: dict[str, Any], partition: int = 0) -> InputRecord:
    return InputRecord("t.earns", partition, offset, None, json.dumps(body).encode(), (), int(time.time() * 1000),
                       Stream.EARNS)


def earn(request_id: str, customer: int, org: int = ORG) -> dict[str, Any]:
    return {"orgId": org, "requestId": request_id, "badgeMetaId": "blk-b", "customerId": customer}


def comparable(state: ResumeState) -> dict[str, Any]:
    return {"keys": state.keys, "ledger": state.ledger, "outcomes": state.outcomes, "earned": state.earned,
            "intents": state.intents, "rejected": state.rejected}


async def test_the_read_by_block_gives_what_the_read_by_request_id_gives(
        settings: Settings, mongo: Repositories, redis_client: Redis) -> None:
    """40 earns at offsets 236..275 (two blocks; customers earn twice, the second refused),
    outcomes stored for the first 15 only, as when a worker is killed mid-batch; next to them,
    in the same blocks, earns nobody asks about, and one of another partition."""
    await load(mongo, live_badge("blk-b", customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 1}]))
    processor = Processor(mongo, RedisStore(redis_client, settings.redis_key_prefix),
                          RequestCache(redis_client, settings.redis_key_prefix), badge_cache_ttl=60)
    batch = [record(236 + i, earn(f"b{i}", 3000 + i % 20)) for i in range(40)]
    others = [record(300 + i, earn(f"o{i}", 4000 + i)) for i in range(5)] + [record(240, earn("p1", 5000), 1)]
    first = await processor.process_batch(batch + others)
    assert {r.code for r in first[:40]} == {200, 830}
    await mongo.ledger_store_outcomes((r.ledger, r.outcome, r.record.origin) for r in first[:15]
                                      if r.ledger is not None)
    keys = {(ORG, f"b{i}") for i in range(40)}
    by_request = await mongo.prefetch_resume(sorted(keys), ["earn"], restart=True)
    by_block = await mongo.prefetch_resume([], [], restart=True,
                                           blocks={(ORG, f"b{i}"): origin_block(batch[i].origin) for i in range(40)})
    assert {origin_block(r.origin) for r in batch} == {"t.earns/0/0", "t.earns/0/1"}
    assert comparable(by_block) == comparable(by_request)
    assert len(by_block.outcomes) == 15 and by_block.intents and by_block.earned and by_block.rejected
    assert by_block.keys == keys  # nothing of the others


async def test_a_key_whose_ledger_entry_is_not_in_its_block_is_read_by_request_id_in_the_same_load(
        settings: Settings, mongo: Repositories, redis_client: Redis) -> None:
    """requestId r1 was first used by a message of another block (a reuse the cache lost), r2
    was stored before blocks existed: the read by block finds neither, so the same load reads
    both by requestId (none is left to a find of its own), r1's ledger entry alone (the asker's
    answer is 809); r3 next to them comes from its block."""
    await load(mongo, live_badge("blk-b"))
    processor = Processor(mongo, RedisStore(redis_client, settings.redis_key_prefix),
                          RequestCache(redis_client, settings.redis_key_prefix), badge_cache_ttl=60)
    await processor.process_batch([record(5000, earn("r1", 1)), record(10, earn("r3", 3))])
    await mongo.requests.insert_one({"orgId": ORG, "requestId": "r2", "origin": "t.earns/0/11", "type": "earn",
                                     "createdAt": time.time()})
    askers = {(ORG, "r1"): "t.earns/0/12", (ORG, "r2"): "t.earns/0/11", (ORG, "r3"): "t.earns/0/10"}
    blocks = {key: origin_block(origin) for key, origin in askers.items()}
    state = await mongo.prefetch_resume([], [], restart=True, blocks=blocks, origins=list(askers.items()))
    assert state.keys == set(askers)
    assert {key: d["origin"] for key, d in state.ledger.items()} == {
        (ORG, "r1"): "t.earns/0/5000", (ORG, "r2"): "t.earns/0/11", (ORG, "r3"): "t.earns/0/10"}
    assert set(state.earned) == {(ORG, "r3")}  # r1's first user's earned badge is not read
    stored = await mongo.requests.find_one({"orgId": ORG, "requestId": "r1"})
    assert stored is not None and stored[K.ORIGIN_BLOCK_FIELD] == "t.earns/0/19"


async def test_keys_asked_both_ways_are_read_by_request_id(mongo: Repositories) -> None:
    """Two batches in one read window: one asks r1 by requestId (a reuse), the other by block;
    the state has what the read by requestId found."""
    await mongo.ledger_insert_many([(ORG, "r1", "t.earns/0/600", "earn"), (ORG, "r2", "t.earns/0/601", "earn")])
    state = await mongo._load_resume({(ORG, "r1")}, ["earn"], blocks={(ORG, "r1"): "t.earns/0/0",
                                                                    (ORG, "r2"): origin_block("t.earns/0/601")})
    assert state.keys == {(ORG, "r1"), (ORG, "r2")}
    assert state.ledger[(ORG, "r1")]["origin"] == "t.earns/0/600"
    assert state.ledger[(ORG, "r2")]["origin"] == "t.earns/0/601"
