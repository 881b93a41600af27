"""service/commit.py on a real broker: a batch's outputs go out packed per partition
(send_batch), each record on the partition producer.send would have chosen for its key,
in the batch's order, exactly once, and only when the transaction commits."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from badge_worker.adapters import kafka_io
from badge_worker.domain.commands import Stream
from badge_worker.service.commit import _send_all, commit_batch
from badge_worker.service.messages import InputRecord, Result
from badge_worker.service.ownership import Bounds
from badge_worker.settings import Settings

ORG = 100458


def result(offset: int, key: bytes | None, code: int = 200, pad: int = 0) -> Result:
    record = InputRecord("in.earns", 0, offset, key, b"{}", (), int(time.time() * 1000), Stream.EARNS)
    outcome: dict[str, Any] = {"orgId": ORG, "requestId": f"q{offset}", "data": {"pad": "x" * pad}}
    if code != 200:
        outcome = {"orgId": ORG, "requestId": f"q{offset}", "errors": [{"code": code, "message": "no"}]}
    return Result(record, outcome, to_dlq=code == 500)


async def read_all(s: Settings, topic: str, count: int, isolation: str = "read_committed") -> list[Any]:
    tps = await kafka_io.partitions_of(s, [topic])
    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap_servers, isolation_level=isolation,
                                enable_auto_commit=False, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got: list[Any] = []
        deadline = time.monotonic() + 30
        while len(got) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got.extend(records)
        for records in (await consumer.getmany(timeout_ms=500)).values():  # nothing more comes
            got.extend(records)
        return got
    finally:
        await consumer.stop()


async def test_outputs_land_on_the_key_partition_in_order_once_and_only_when_committed(topics: Settings) -> None:
    s = topics
    keys = [f"customer-{i % 37}".encode() for i in range(600)]
    # keyed and unkeyed, refused and DLQ'd, and values big enough to fill several batches
    results = [result(i, keys[i] if i % 10 else None, code=(830 if i % 7 == 0 else 500 if i % 97 == 0 else 200),
                      pad=20_000 if i % 50 == 0 else 0) for i in range(600)]
    producer = kafka_io.make_transactional_producer(s, f"{s.consumer_group}.commit-test")
    probe = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers)
    await producer.start()
    await probe.start()
    try:
        # an aborted run first: none of it may be read as committed
        await producer.begin_transaction()
        await asyncio.gather(*await _send_all(producer, s, results[:100], lambda _: s.output_max_message_bytes))
        await producer.abort_transaction()
        await commit_batch(producer, s, TopicPartition(s.topic_earns, 0), [r.record for r in results], results,
                           Bounds())
        # where the plain producer.send() puts each key
        expected = {k: (await (await probe.send(s.topic_results, b"probe", key=k))).partition for k in set(keys)}
    finally:
        await producer.stop()
        await probe.stop()
    ok = [r for r in results if r.ok]
    refused = [r for r in results if not r.ok]
    got = [m for m in await read_all(s, s.topic_results, len(ok) + len(expected)) if m.value != b"probe"]
    errors = await read_all(s, s.topic_errors, len(refused))
    dlq = await read_all(s, s.topic_dlq, sum(r.to_dlq for r in results))
    assert sorted(json.loads(m.value)["requestId"] for m in got) == \
        sorted(r.outcome["requestId"] for r in ok)  # each once: the aborted copies are not read
    assert sorted(json.loads(m.value)["requestId"] for m in errors) == \
        sorted(r.outcome["requestId"] for r in refused)
    assert len(dlq) == sum(r.to_dlq for r in results) > 0
    for m in got + errors:
        if m.key is not None:
            assert m.partition == expected[m.key], (m.key, m.partition)
    # per key (hence per partition), the batch's order
    for records in (got, errors):
        by_key: dict[bytes, list[int]] = {}
        for m in sorted(records, key=lambda m: (m.partition, m.offset)):
            if m.key is not None:
                by_key.setdefault(m.key, []).append(int(json.loads(m.value)["requestId"][1:]))
        assert by_key and all(seq == sorted(seq) for seq in by_key.values())
    assert any(m.key is None for m in got)


async def test_a_refused_output_commits_nothing_of_the_batch_offsets_included(topics: Settings) -> None:
    """aiokafka commits a transaction even when one of its records was refused: a record the
    broker refuses must leave the batch uncommitted, its input offset included."""
    small = f"{topics.topic_results}.small"
    admin = AIOKafkaAdminClient(bootstrap_servers=topics.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(small, 1, 1, topic_configs={"max.message.bytes": "4000"})])
    finally:
        await admin.close()
    s = topics.model_copy(update={"topic_results": small})
    results = [result(i, f"customer-{i}".encode(), pad=20_000 if i == 5 else 0) for i in range(10)]
    tp = TopicPartition(s.topic_earns, 0)
    producer = kafka_io.make_transactional_producer(s, f"{s.consumer_group}.refused-test")
    await producer.start()
    try:
        # the topic's real limit is not given (size_limits), so the big record goes out as is
        with pytest.raises(KafkaError):
            await commit_batch(producer, s, tp, [r.record for r in results], results, Bounds())
    finally:
        await producer.stop()
    assert await read_all(s, small, 0) == []  # (and one more fetch of 0.5 s: nothing comes)
    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap_servers, group_id=s.consumer_group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        assert await consumer.committed(tp) is None
    finally:
        await consumer.stop()
