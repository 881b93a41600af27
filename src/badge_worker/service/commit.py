"""Publish a partition batch: its outcomes, DLQ copies and input offsets in ONE Kafka
transaction, every step bounded so that a stuck broker call becomes an outage, not a hang."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from badge_worker import constants as K
from badge_worker.adapters import kafka_io
from badge_worker.domain import events
from badge_worker.service.messages import InputRecord, Result
from badge_worker.service.ownership import Bounds, bounded
from badge_worker.settings import Settings

log = structlog.get_logger("badge_worker.commit")


RECORD_OVERHEAD = 512  # bytes of record framing counted against the size limit, generously


def fit_record(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]], limit: int
               ) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """A record that fits in `limit` bytes, whatever the input was: an oversized key or value
    is cut, and `x-truncated` says what it was (a record too large to publish would otherwise
    stop the partition for good). Only a producer abusing the 1 MB input limit gets here."""
    size = (len(key or b"") + len(value or b"") + RECORD_OVERHEAD
            + sum(len(k.encode()) + len(v) + 16 for k, v in headers))
    if size <= limit:
        return key, value, headers
    note = f"key={len(key or b'')},value={len(value or b'')}".encode()
    room = max(0, limit - RECORD_OVERHEAD - 64 - sum(len(k.encode()) + len(v) + 16 for k, v in headers))
    if key is not None and len(key) > 1024:
        key = key[:1024]
    if value is not None:
        value = value[: max(0, room - len(key or b""))]
    return key, value, [*headers, (K.H_TRUNCATED, note)]


class _Outputs:
    """The batch's output records packed into one aiokafka batch per output partition, each
    sent with send_batch: producer.send() makes a future per record and picks its partition
    one call at a time (~6% of the worker's CPU, py-spy). Partitions are chosen as the
    producer's default partitioner does (murmur2 of the key), so a key lands where it always did."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self.partitions: dict[str, list[int]] = {}
        self.open: dict[tuple[str, int], BatchBuilder] = {}
        self.deliveries: list[asyncio.Future[object]] = []

    async def add(self, topic: str, key: bytes | None, value: bytes | None,
                  headers: list[tuple[str, bytes]]) -> None:
        partitions = self.partitions.get(topic)
        if partitions is None:
            partitions = self.partitions[topic] = sorted(await self.producer.partitions_for(topic))
        partition = _PARTITIONER(key, partitions, partitions)
        builder = self.open.get((topic, partition))
        if builder is None:
            builder = self.open[(topic, partition)] = self.producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
            # full (a batch takes max_batch_size bytes, and always at least one record)
            await self._send(topic, partition, builder)
            builder = self.open[(topic, partition)] = self.producer.create_batch()
            builder.append(key=key, value=value, timestamp=None, headers=headers)

    async def _send(self, topic: str, partition: int, builder: BatchBuilder) -> None:
        self.deliveries.append(await self.producer.send_batch(builder, topic, partition=partition))

    async def flush(self) -> list[asyncio.Future[object]]:
        for (topic, partition), builder in self.open.items():
            await self._send(topic, partition, builder)
        self.open.clear()
        return self.deliveries


_PARTITIONER = DefaultPartitioner()


async def _send_all(producer: AIOKafkaProducer, settings: Settings, results: list[Result],
                    limit: Callable[[str], int]) -> list[asyncio.Future[object]]:
    """Queue every output of the batch (bounded as a whole: one timer per batch, not per record)."""
    outputs = _Outputs(producer)
    for r in results:
        key = r.record.key
        outcome, event = events.split(r.outcome)  # the event rides in the outcome dict, unpublished
        topic = settings.topic_results if r.ok else settings.topic_errors
        headers = kafka_io.outcome_headers(r.record, r.span_id)
        await outputs.add(topic, *fit_record(key, kafka_io.encode(outcome), headers, limit(topic)))
        if event is not None:
            headers = kafka_io.outcome_headers(r.record, r.span_id)
            await outputs.add(settings.topic_events, *fit_record(
                kafka_io.event_key(event), kafka_io.encode_event(event), headers, limit(settings.topic_events)))
        if r.to_dlq:
            await outputs.add(settings.topic_dlq, *fit_record(key, r.record.value, kafka_io.dlq_headers(r),
                                                              limit(settings.topic_dlq)))
            log.warning("sent_to_dlq", topic=r.record.topic, partition=r.record.partition,
                        offset=r.record.offset, code=r.code, orgId=r.outcome.get("orgId"),
                        requestId=r.outcome.get("requestId"))
    return await outputs.flush()


async def commit_batch(producer: AIOKafkaProducer, settings: Settings, tp: TopicPartition,
                       records: list[InputRecord], results: list[Result], bounds: Bounds,
                       size_limits: dict[str, int] | None = None) -> None:
    """`size_limits`: the output topics' real max.message.bytes (a topic created by someone
    else may take less than OUTPUT_MAX_MESSAGE_BYTES)."""
    def limit(topic: str) -> int:
        return min(settings.output_max_message_bytes, (size_limits or {}).get(topic, settings.output_max_message_bytes))

    await bounded(producer.begin_transaction(), bounds.kafka_call, "begin transaction")
    try:
        # one bound for the batch's sends, growing with its size (a send waits while its
        # partition's buffer is full): a call's bound for every 500 outputs
        deliveries = await bounded(_send_all(producer, settings, results, limit),
                                   bounds.kafka_call * (1 + len(results) // 500), "send outputs")
        # Every record must be in before the offsets are: aiokafka commits a transaction even
        # when one of its records was refused, which would lose that outcome.
        delivered = await bounded(asyncio.shield(asyncio.gather(*deliveries, return_exceptions=True)),
                                  bounds.kafka_call, "deliver outputs")
        refused = next((d for d in delivered if isinstance(d, BaseException)), None)
        if refused is not None:
            raise refused
        await bounded(producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, settings.consumer_group),
                      bounds.kafka_call, "send offsets")
        await bounded(producer.commit_transaction(), bounds.kafka_call, "commit transaction")
    except BaseException:
        # Fenced, refused, timed out or cancelled: end the transaction if the producer still
        # can (briefly: a revoke waits for this); the caller starts a new producer anyway,
        # which aborts whatever is left open.
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(producer.abort_transaction(), bounds.abort)
        raise
