"""The servers are real: Kafka transactions, a Redis Lua script, a MongoDB unique index."""

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.errors import DuplicateKeyError
from redis.asyncio import Redis

from tests.conftest import Servers


async def read_all(servers: Servers, topic: str, isolation: str, expect_at_least: int = 0) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=servers.kafka, auto_offset_reset="earliest",
                                isolation_level=isolation, group_id=None)
    await consumer.start()
    seen: list[bytes] = []
    try:
        idle = 0
        while idle < 3 or len(seen) < expect_at_least:
            batch = await consumer.getmany(timeout_ms=500)
            got = [m.value or b"" for msgs in batch.values() for m in msgs]
            seen += got
            idle = 0 if got else idle + 1
            if idle > 20:
                break
    finally:
        await consumer.stop()
    return seen


async def test_transactional_consume_produce_round_trip_and_abort(servers: Servers) -> None:
    tag = uuid.uuid4().hex[:8]
    source, sink, group = f"src-{tag}", f"snk-{tag}", f"grp-{tag}"
    admin = AIOKafkaAdminClient(bootstrap_servers=servers.kafka)
    await admin.start()
    await admin.create_topics([NewTopic(source, 2, 1), NewTopic(sink, 2, 1)])
    await admin.close()

    idempotent = AIOKafkaProducer(bootstrap_servers=servers.kafka, enable_idempotence=True, acks="all")
    await idempotent.start()
    for i in range(20):
        await idempotent.send(source, f"in-{i}".encode(), key=str(i % 3).encode())
    await idempotent.flush()
    await idempotent.stop()

    consumer = AIOKafkaConsumer(source, bootstrap_servers=servers.kafka, group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level="read_committed")
    txn = AIOKafkaProducer(bootstrap_servers=servers.kafka, transactional_id=f"txn-{tag}")
    await consumer.start()
    await txn.start()
    try:
        moved: list[bytes] = []
        while len(moved) < 20:
            batch = await consumer.getmany(timeout_ms=2000)
            async with txn.transaction():
                offsets = {}
                for tp, msgs in batch.items():
                    for m in msgs:
                        await txn.send(sink, b"out-" + (m.value or b""))
                        moved.append(m.value or b"")
                    offsets[tp] = msgs[-1].offset + 1
                await txn.send_offsets_to_transaction(offsets, group)
        # an aborted transaction: its records must never be seen by read_committed
        await txn.begin_transaction()
        await txn.send(sink, b"aborted-1")
        await txn.send(sink, b"aborted-2")
        await txn.flush()
        await txn.abort_transaction()
        committed = {tp: await consumer.committed(tp) for tp in consumer.assignment()}
    finally:
        await txn.stop()
        await consumer.stop()

    assert sum(v or 0 for v in committed.values()) == 20  # offsets committed by the transaction
    visible = await read_all(servers, sink, "read_committed", expect_at_least=20)
    assert sorted(visible) == sorted(f"out-in-{i}".encode() for i in range(20))
    raw = await read_all(servers, sink, "read_uncommitted", expect_at_least=22)
    assert b"aborted-1" in raw and b"aborted-2" in raw  # they were written, then aborted


async def test_a_redis_lua_script_runs_atomically(servers: Servers) -> None:
    client = Redis.from_url(servers.redis)
    key = f"probe:{uuid.uuid4().hex}"
    take = client.register_script(
        "local n = tonumber(redis.call('GET', KEYS[1]) or '0') "
        "if n >= tonumber(ARGV[1]) then return 0 end redis.call('INCR', KEYS[1]) return 1")
    try:
        wins = await asyncio.gather(*(take(keys=[key], args=[7]) for _ in range(50)))
        assert sum(wins) == 7
        assert int(await client.get(key)) == 7
    finally:
        await client.delete(key)
        await client.aclose()


async def test_mongodb_unique_index_raises_duplicate_key(servers: Servers) -> None:
    client: AsyncMongoClient = AsyncMongoClient(servers.mongodb)  # type: ignore[type-arg]
    db = client[f"probe_{uuid.uuid4().hex[:8]}"]
    try:
        await db.items.create_index([("orgId", ASCENDING), ("requestId", ASCENDING)], unique=True)
        await db.items.insert_one({"orgId": 1, "requestId": "r"})
        await db.items.insert_one({"orgId": 2, "requestId": "r"})  # another org: fine
        with pytest.raises(DuplicateKeyError) as caught:
            await db.items.insert_one({"orgId": 1, "requestId": "r"})
        assert caught.value.code == 11000
        assert await db.items.count_documents({}) == 2
    finally:
        await client.drop_database(db.name)
        await client.close()
