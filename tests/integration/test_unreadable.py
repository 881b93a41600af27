"""A record the Kafka client itself cannot parse (README, "Guarantees, and their limits").

A header *name* that is not UTF-8 (librdkafka can write one, Java clients cannot) makes
aiokafka's record parser raise UnicodeDecodeError inside `consumer.getmany`. The worker must
park that partition alone (paused, marked unreadable, /readyz 503, an `unreadable_record`
error naming topic, partition and position) and go on with the others."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, TopicPartition
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from structlog.testing import capture_logs

from badge_worker.adapters.mongo import Repositories
from badge_worker.client import Collector, Coord, Publisher
from badge_worker.settings import Settings
from tests.integration.helpers import ORG, live_badge, load, running_worker

BAD_HEADER_NAME = b"\xff\xfebad"  # not UTF-8
PLACEHOLDER = "\x01PLACEHOLDER\x01"  # same length as what replaces it, so no length varint changes
assert len(PLACEHOLDER.encode()) > len(BAD_HEADER_NAME)


def unreadable_batch(key: bytes, value: bytes) -> bytes:
    """One record batch (format v2) of one record whose header name is not UTF-8.

    The builder only takes header names as str (and encodes them as UTF-8), so the record
    is written with a placeholder name of the same byte length, patched before the batch's
    CRC-32C is computed (`build()` computes it)."""
    name = PLACEHOLDER.encode()[: len(BAD_HEADER_NAME)].decode()
    builder = _DefaultRecordBatchBuilderPy(magic=2, compression_type=0, is_transactional=0, producer_id=-1,
                                           producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    builder.append(0, timestamp=None, key=key, value=value, headers=[(name, b"v")])
    buffer = builder._buffer
    at = buffer.rindex(name.encode())  # the headers come after the key and the value
    buffer[at : at + len(BAD_HEADER_NAME)] = BAD_HEADER_NAME
    return bytes(builder.build())


async def produce_unreadable(settings: Settings, tp: TopicPartition, key: bytes, value: bytes) -> int:
    """Put the batch on the broker with a plain ProduceRequest; returns the record's offset."""
    client = AIOKafkaClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await client.bootstrap()
    try:
        await client._wait_on_metadata(tp.topic)
        leader = client.cluster.leader_for_partition(tp)
        request = ProduceRequest(transactional_id=None, required_acks=-1, timeout=10_000,
                                 topics=[(tp.topic, [(tp.partition, unreadable_batch(key, value))])])
        response = await client.send(leader, request)
    finally:
        await client.close()
    [(topic, [partition_response])] = response.topics
    partition, error_code, offset = partition_response[:3]
    assert (topic, partition, error_code) == (tp.topic, tp.partition, 0), response
    return int(offset)


async def assert_client_cannot_read(settings: Settings, tp: TopicPartition, offset: int) -> None:
    """A plain consumer (no group) fails on that record: the client, not the worker, cannot parse it."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + 10
        with pytest.raises(UnicodeDecodeError):  # noqa: PT012 - fetching may take a round or two
            while time.monotonic() < deadline:
                got = await consumer.getmany(tp, timeout_ms=500)
                assert not got.get(tp), f"the record was read: {got}"
    finally:
        await consumer.stop()


async def send_to(pub: Publisher, tp: TopicPartition, bodies: list[dict[str, Any]]) -> list[Coord]:
    futures = [await pub.producer.send(tp.topic, json.dumps(b).encode(), key=str(b["customerId"]).encode(),
                                       partition=tp.partition) for b in bodies]
    return [(tp.topic, (meta := await f).partition, meta.offset) for f in futures]


def earns(prefix: str, count: int, first_customer: int) -> list[dict[str, Any]]:
    return [{"orgId": ORG, "requestId": f"{prefix}-{i}", "badgeMetaId": "unreadable-b",
             "customerId": first_customer + i} for i in range(count)]


async def test_unreadable_record_parks_its_partition_and_the_others_go_on(topics: Settings,
                                                                           mongo: Repositories) -> None:
    s = topics
    await load(mongo, live_badge("unreadable-b"))
    tps = [TopicPartition(s.topic_earns, p) for p in range(s.topic_partitions)]
    bad_tp, good_tps = tps[1], [tp for tp in tps if tp != tps[1]]
    with capture_logs() as logged:
        async with running_worker(s) as worker, Collector(s) as collector, Publisher(s) as pub:
            [task] = [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") == "Worker.run"]
            # every partition works, the one to be poisoned too
            warm = [c for i, tp in enumerate(tps) for c in await send_to(pub, tp, earns(f"warm{i}", 2, 1000 * i))]
            assert {o.code for o in (await collector.wait_for(warm, 25)).values()} == {200}

            bad_offset = await produce_unreadable(s, bad_tp, b"k", json.dumps(earns("bad", 1, 90_000)[0]).encode())
            after_bad = await send_to(pub, bad_tp, earns("after", 5, 91_000))
            good = [c for i, tp in enumerate(good_tps) for c in await send_to(pub, tp, earns(f"g{i}", 5, 10_000 * i))]
            await assert_client_cannot_read(s, bad_tp, bad_offset)
            assert {o.code for o in (await collector.wait_for(good, 20)).values()} == {200}

            # parked: the others still go on
            later = [c for i, tp in enumerate(good_tps) for c in await send_to(pub, tp, earns(f"l{i}", 3, 50_000 + i))]
            assert {o.code for o in (await collector.wait_for(later, 20)).values()} == {200}
            quiet_until = time.monotonic() + 2  # time for a stray outcome (a duplicate, the parked partition) to show
            while time.monotonic() < quiet_until:
                await collector.poll(200)

            assert not task.done(), task.exception() if not task.cancelled() else "cancelled"
            assert worker.is_alive()
            assert worker.ready is False
            assert {tp for tp in tps if (p := worker.ownership.get(tp)) is not None and p.unreadable} == {bad_tp}
            assert worker.consumer is not None and bad_tp in worker.consumer.paused()
            counts = collector.count_by_input()
            assert all(counts.get(c) == 1 for c in warm + good + later), counts
            assert not [c for c in counts if (c[0], c[1]) == (bad_tp.topic, bad_tp.partition) and c[2] >= bad_offset]
            assert after_bad[0][2] > bad_offset
    unreadable = [e for e in logged if e["event"] == "unreadable_record"]
    assert unreadable, [e["event"] for e in logged]
    assert {(e["topic"], e["partition"], e["position"], e["error"]) for e in unreadable} == \
        {(bad_tp.topic, bad_tp.partition, bad_offset, "UnicodeDecodeError")}


async def test_unreadable_record_behind_readable_backlog(topics: Settings, mongo: Repositories) -> None:
    s = topics
    await load(mongo, live_badge("unreadable-b"))
    tps = [TopicPartition(s.topic_earns, p) for p in range(s.topic_partitions)]
    bad_tp, good_tps = tps[1], [tp for tp in tps if tp != tps[1]]
    async with Collector(s) as collector, Publisher(s) as pub:
        # a backlog, as after a restart or with lag: readable records, then the unreadable one
        before = await send_to(pub, bad_tp, earns("before", 3, 80_000))
        bad_offset = await produce_unreadable(s, bad_tp, b"k", b"{}")
        good = [c for i, tp in enumerate(good_tps) for c in await send_to(pub, tp, earns(f"g{i}", 5, 10_000 * i))]
        async with running_worker(s) as worker:
            await collector.wait_for(good + before, 12)
            assert {tp for tp in tps if (p := worker.ownership.get(tp)) is not None and p.unreadable} == {bad_tp}
            assert worker.ready is False
            assert bad_offset == before[-1][2] + 1
