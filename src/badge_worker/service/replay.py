"""DLQ replay: re-publish dead-lettered records to their original topics, marked with the
coordinates of the original message so that the worker treats them as that same message."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from badge_worker import constants as K
from badge_worker.adapters import kafka_io
from badge_worker.settings import Settings


@dataclass
class ReplayFilter:
    topic: str | None = None
    code: int | None = None
    org: int | None = None
    limit: int | None = None

    def matches(self, headers: dict[str, str], value: bytes | None) -> bool:
        if self.topic and headers.get(K.H_INPUT_TOPIC) != self.topic:
            return False
        if self.code is not None and headers.get(K.H_ERROR_CODE) != str(self.code):
            return False
        if self.org is not None:
            return f'"orgId":{self.org}' in (value or b"").decode("utf-8", "replace").replace(" ", "")
        return True


@dataclass
class ReplayReport:
    scanned: int = 0
    replayed: int = 0
    skipped: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)


def replay_headers(headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The original headers, plus x-replay-of naming the first delivery of the message."""
    named = {k: v.decode("utf-8", "replace") for k, v in headers}
    origin = named.get(K.H_REPLAY_OF) or "/".join(
        (named.get(K.H_INPUT_TOPIC, ""), named.get(K.H_INPUT_PARTITION, ""), named.get(K.H_INPUT_OFFSET, "")))
    dropped = {K.H_INPUT_TOPIC, K.H_INPUT_PARTITION, K.H_INPUT_OFFSET, K.H_ERROR_CODE, K.H_ERROR_MESSAGE,
               K.H_REPLAY_OF}
    kept = [(k, v) for k, v in headers if k not in dropped]
    return [*kept, (K.H_REPLAY_OF, origin.encode())]


def progress_bar(done: int, total: int, width: int = 30) -> str:
    """Progress in offsets (transaction markers take offsets too, so not a record count)."""
    filled = width if total == 0 else min(width, int(width * done / total))
    return f"[{'#' * filled}{'.' * (width - filled)}] offset {done}/{total}"


async def replay_dlq(settings: Settings, flt: ReplayFilter, *, dry_run: bool = False,
                     group: str | None = None, progress: Callable[[str], None] | None = None) -> ReplayReport:
    """Replay what is in the DLQ now (up to its end offsets when called), once: the replay
    consumer group's offsets are committed in the same transaction as the re-published records."""
    group_id = group or f"{settings.consumer_group}.dlq-replay"
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=group_id,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                isolation_level="read_committed")
    await consumer.start()
    producer = None if dry_run else kafka_io.make_transactional_producer(settings, f"{group_id}.producer")
    report = ReplayReport()
    show = progress or (lambda line: print(line, end="\r", file=sys.stderr, flush=True))
    try:
        if producer is not None:
            await producer.start()
        partitions = await kafka_io.partitions_of(settings, [settings.topic_dlq])
        if not partitions:
            return report
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        starts = {}
        for tp in partitions:
            committed = await consumer.committed(tp)
            starts[tp] = committed if committed is not None else (await consumer.beginning_offsets([tp]))[tp]
            consumer.seek(tp, starts[tp])
        total = sum(max(0, ends[tp] - starts[tp]) for tp in partitions)
        remaining = {tp for tp in partitions if starts[tp] < ends[tp]}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=500)
            if not batch:
                remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
                continue
            offsets: dict[TopicPartition, int] = {}
            if producer is not None:
                await producer.begin_transaction()
            try:
                for tp, records in batch.items():
                    for rec in records:
                        if rec.offset >= ends[tp]:
                            continue
                        report.scanned += 1
                        offsets[tp] = rec.offset + 1
                        headers = [(k, v or b"") for k, v in (rec.headers or ())]
                        named = {k: v.decode("utf-8", "replace") for k, v in headers}
                        wanted = flt.matches(named, rec.value) and (flt.limit is None or report.replayed < flt.limit)
                        if not wanted:
                            report.skipped += 1
                            continue
                        target = named.get(K.H_INPUT_TOPIC) or ""
                        out_headers = replay_headers(headers)
                        original_ts = named.get(K.H_ORIGINAL_TIMESTAMP)
                        report.items.append({"topic": target, "origin": dict(out_headers)[K.H_REPLAY_OF].decode(),
                                             "code": named.get(K.H_ERROR_CODE), "dlqOffset": rec.offset})
                        if producer is not None:
                            await producer.send(target, rec.value, key=rec.key, headers=out_headers,
                                                timestamp_ms=int(original_ts) if original_ts and
                                                original_ts.isdigit() else None)
                        report.replayed += 1
                if producer is not None:
                    if offsets:
                        await producer.send_offsets_to_transaction(offsets, group_id)
                    await producer.commit_transaction()
            except BaseException:
                if producer is not None:
                    await producer.abort_transaction()
                raise
            done = 0
            for tp in partitions:
                done += min(await consumer.position(tp), ends[tp]) - starts[tp]
            show(progress_bar(done, total))
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
        if total:
            show(progress_bar(total, total) + "\n")
        return report
    finally:
        if producer is not None:
            await producer.stop()
        await consumer.stop()
