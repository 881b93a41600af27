"""One round of the consume loop's fetch, on a real broker: up to one batch of every
partition with records (not the first partitions' whole buffers), nothing lost when a
fetch fails half-way through a round, and a partition whose batch is still running never
holding the others back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from badge_worker.adapters import kafka_io
from badge_worker.service.ownership import Partition
from badge_worker.service.worker import Worker
from badge_worker.settings import Settings

SIZE = 50  # BATCH_MAX_RECORDS here
PER_PARTITION = 3 * SIZE


async def backlog(s: Settings) -> list[TopicPartition]:
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        for partition in range(s.topic_partitions):
            for n in range(PER_PARTITION):
                await producer.send(s.topic_earns, f"{partition}:{n}".encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    return [TopicPartition(s.topic_earns, p) for p in range(s.topic_partitions)]


async def assigned_worker(s: Settings, tps: list[TopicPartition]) -> Worker:
    worker = Worker(s.model_copy(update={"batch_max_records": SIZE}))
    consumer = kafka_io.make_consumer(worker.settings, group_id=None, group_instance_id=None)
    await consumer.start()
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, 0)
    worker.consumer = consumer
    return worker


def values(batch: dict[TopicPartition, list[Any]]) -> dict[int, list[str]]:
    return {tp.partition: [r.value.decode() for r in records] for tp, records in batch.items()}


async def read_all(worker: Worker) -> dict[int, list[str]]:
    got: dict[int, list[str]] = {}
    for _ in range(100):
        for partition, seen in values(await worker._fetch_round()).items():
            got.setdefault(partition, []).extend(seen)
        if sum(map(len, got.values())) >= PER_PARTITION * worker.settings.topic_partitions:
            break
    return got


def in_order(partitions: int) -> dict[int, list[str]]:
    return {p: [f"{p}:{n}" for n in range(PER_PARTITION)] for p in range(partitions)}


async def test_a_round_takes_one_batch_of_every_partition_with_records(topics: Settings) -> None:
    tps = await backlog(topics)
    worker = await assigned_worker(topics, tps)
    assert worker.consumer is not None
    try:
        rounds: list[dict[int, list[str]]] = []
        while sum(len(v) for r in rounds for v in r.values()) < PER_PARTITION * len(tps):
            assert len(rounds) < 100
            batch = values(await worker._fetch_round())
            assert all(len(v) <= SIZE for v in batch.values()), {p: len(v) for p, v in batch.items()}
            rounds.append(batch)
        # every partition is in a round once the client holds its records (one broker: one
        # fetch answers for all of them); a getmany of SIZE x partitions in all gave the first
        # partitions their whole buffers and the last ones nothing
        full = [r for r in rounds if len(r) == len(tps) and all(len(v) == SIZE for v in r.values())]
        assert len(full) >= 2, [{p: len(v) for p, v in r.items()} for r in rounds]
        merged: dict[int, list[str]] = {}
        for r in rounds:
            for p, v in r.items():
                merged.setdefault(p, []).extend(v)
        assert merged == in_order(len(tps))  # each record once, in order
    finally:
        await worker.consumer.stop()


async def test_a_fetch_failing_mid_round_loses_nothing(topics: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    tps = await backlog(topics)
    worker = await assigned_worker(topics, tps)
    consumer = worker.consumer
    assert consumer is not None
    try:
        await read_all_buffered(worker)
        real = consumer.getmany
        calls = 0

        async def failing_top_up(*partitions: TopicPartition, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 3:  # the second partition's top-up, after the first got records
                raise KafkaError("injected")
            return await real(*partitions, **kwargs)

        monkeypatch.setattr(consumer, "getmany", failing_top_up)
        with pytest.raises(KafkaError, match="injected"):
            await worker._fetch_round()
        monkeypatch.setattr(consumer, "getmany", real)
        assert await read_all(worker) == in_order(len(tps))  # from the first record again, none skipped
    finally:
        await consumer.stop()



async def read_all_buffered(worker: Worker) -> None:
    """Wait until the client has fetched from every partition (taking no record)."""
    assert worker.consumer is not None
    for tp in worker.consumer.assignment():
        for _ in range(200):
            if worker.consumer.highwater(tp):
                break
            await asyncio.sleep(0.05)


async def test_a_slow_partition_does_not_hold_the_others(topics: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Partition 0's first batch hangs; every other partition meanwhile runs all its batches,
    one at a time and in order; partition 0 then goes on from where it was, never with two
    batches at once. (Rounds that waited for every batch gave each partition one batch and
    then waited for the hung one.)"""
    tps = await backlog(topics)
    worker = await assigned_worker(topics, tps)
    consumer = worker.consumer
    assert consumer is not None
    for tp in tps:
        worker.ownership.partitions[tp] = Partition(tp, generation=1)
    release = asyncio.Event()
    seen: dict[int, list[str]] = {}
    running: set[int] = set()
    overlaps: list[int] = []

    async def process(part: Partition, raw: list[Any]) -> None:
        p = part.tp.partition
        if p in running:
            overlaps.append(p)
        running.add(p)
        try:
            if p == 0 and not seen.get(0):
                await release.wait()
            await asyncio.sleep(0.01)
            seen.setdefault(p, []).extend(r.value.decode() for r in raw)
        finally:
            running.discard(p)

    monkeypatch.setattr(worker, "_process_chunks", process)
    try:
        others = PER_PARTITION * (len(tps) - 1)
        async with asyncio.timeout(60):  # a loop that waits for the hung batch never gets past this
            while sum(len(v) for p, v in seen.items() if p != 0) < others:
                await worker._poll_once()
        assert {p: len(v) for p, v in seen.items()} == {p: PER_PARTITION for p in range(1, len(tps))}
        assert 0 in running  # still hung, and the others are done
        release.set()
        async with asyncio.timeout(60):
            while len(seen.get(0, ())) < PER_PARTITION:
                await worker._poll_once()
            await worker._drain()
        assert seen == in_order(len(tps)) and overlaps == []
    finally:
        release.set()
        await worker._drain()
        await consumer.stop()
