"""Kafka transport: consumer and transactional producers, topics, and record shapes out."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from badge_worker import constants as K
from badge_worker.domain.commands import Stream
from badge_worker.service.messages import InputRecord, Result
from badge_worker.settings import Settings

Headers = list[tuple[str, bytes]]


async def ensure_topics(settings: Settings, partitions: int | None = None) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [*settings.input_topics(), *settings.output_topics()]
        missing = [NewTopic(t, partitions or settings.topic_partitions, 1) for t in wanted if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()


async def partitions_of(settings: Settings, topics: list[str], timeout: float = 30.0) -> list[TopicPartition]:
    """Every partition of `topics` (a consumer only knows the topics it subscribes to).

    Just after a topic is created the broker may describe it without partitions yet: wait."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while True:
            described = await admin.describe_topics(topics)
            found = {t["topic"]: t for t in described if t["error_code"] == 0 and t["partitions"]}
            if set(found) >= set(topics) or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    return [TopicPartition(t["topic"], p["partition"]) for t in found.values()
            for p in sorted(t["partitions"], key=lambda p: p["partition"])]


def make_consumer(settings: Settings, **overrides: Any) -> AIOKafkaConsumer:
    options: dict[str, Any] = dict(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.consumer_group,
        client_id=settings.worker_id,
        enable_auto_commit=False,  # offsets are committed inside the output transaction
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=settings.batch_max_records,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        max_poll_interval_ms=300_000,
        session_timeout_ms=15_000,
        heartbeat_interval_ms=3_000,
    )
    options.update(overrides)
    return AIOKafkaConsumer(**options)


def make_transactional_producer(settings: Settings, transactional_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        transactional_id=transactional_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        transaction_timeout_ms=settings.transaction_timeout_ms,
        client_id=f"{settings.worker_id}-{transactional_id}",
    )


def partition_transactional_id(settings: Settings, topic: str, partition: int) -> str:
    """One transactional id per input partition: whoever owns the partition next fences
    the previous owner's producer and aborts its open transaction."""
    return f"{settings.consumer_group}.{topic}.{partition}"


def to_input(record: ConsumerRecord[bytes, bytes], settings: Settings) -> InputRecord:
    stream = Stream.CLAIMS if record.topic == settings.topic_claims else Stream.EARNS
    headers = tuple((k, v or b"") for k, v in (record.headers or ()))
    return InputRecord(record.topic, record.partition, record.offset, record.key, record.value,
                       headers, record.timestamp, stream)


def outcome_headers(record: InputRecord) -> Headers:
    return [(K.H_INPUT_TOPIC, record.topic.encode()), (K.H_INPUT_PARTITION, str(record.partition).encode()),
            (K.H_INPUT_OFFSET, str(record.offset).encode())]


def dlq_headers(result: Result) -> Headers:
    record = result.record
    kept = [(k, v) for k, v in record.headers
            if k not in (K.H_INPUT_TOPIC, K.H_INPUT_PARTITION, K.H_INPUT_OFFSET, K.H_ERROR_CODE,
                         K.H_ERROR_MESSAGE, K.H_ORIGINAL_TIMESTAMP)]
    error = (result.outcome.get("errors") or [{}])[0]
    original_ts = record.header(K.H_ORIGINAL_TIMESTAMP) or str(record.timestamp_ms)
    return [*kept, *outcome_headers(record), (K.H_ERROR_CODE, str(error.get("code", "")).encode()),
            (K.H_ERROR_MESSAGE, str(error.get("message", "")).encode()),
            (K.H_ORIGINAL_TIMESTAMP, original_ts.encode())]


def encode(outcome: dict[str, Any]) -> bytes:
    return json.dumps(outcome, separators=(",", ":"), ensure_ascii=False).encode()
