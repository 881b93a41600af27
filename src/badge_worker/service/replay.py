"""DLQ replay: re-publish dead-lettered records to their original topics, marked with the
coordinates of the original message so that the worker treats them as that same message.

Guarantees
- **At most once per DLQ record**, across runs, filters, consumer groups and crashes.
- **A record left out** (by --topic/--code/--org/--limit, or because it cannot be settled yet)
  **stays replayable** by a later run.
- **A malformed record** (no or unknown `x-input-topic`, a topic that is not an input topic,
  unreadable coordinate or timestamp headers) is reported with a reason, counted as
  `malformed` and skipped; it never stops the run.

How
1. Marks. Every re-published record gets a mark in MongoDB `dlq_replays` (_id
   "dlqtopic/partition/offset", insert-once; adapters/mongo.py DlqReplayMarks). A record
   with a DONE mark is never re-published again, whoever runs the replay.
2. One Kafka transaction per batch holds the re-published records and the replay group's
   offsets. In it: send the records, wait for their offsets in the target partitions, insert
   their marks as PENDING with those target coordinates, then commit. After the commit the
   marks are set DONE. A crash leaves one of: marks not inserted (the transaction never
   committed: nothing was replayed, nothing is marked); PENDING marks whose transaction
   aborted; PENDING marks whose transaction committed.
3. Settling a PENDING mark. Every run uses the same transactional id (per DLQ topic), so
   starting its producer fences any earlier run and completes (commits or aborts) its open
   transaction. The run then reads the target partition, read_committed, at the mark's
   target offset: a committed record there is the replay (offsets are unique), so the mark
   becomes DONE; no committed record there means the transaction aborted, so the mark is
   dropped and the record is replayable again. If that cannot be told yet (the partition's
   last stable offset is held back by someone else's open transaction), the record is
   reported as `pending` and left for a later run. A concurrent run that inserts a mark
   first makes the other's transaction abort (duplicate key) before anything commits.
4. Consumer-group offsets are only a shortcut over what needs no second look: per
   partition, the committed offset advances over the contiguous prefix of records that are
   settled (replayed in this transaction, marked DONE, or malformed). A filtered-out or
   pending record stops the advance, so the next run reads it again; records after it that
   were replayed are skipped by their marks.

Replay headers: the DLQ record's headers minus the DLQ's own (`x-input-*`, `x-error-*`) and
any earlier replay mark, plus `x-replay-of` (the origin: the DLQ record's `x-replay-of` when
it has one — the worker writes it on a DLQ copy only for a replay whose signature verified,
so a replay that failed again keeps naming the first delivery — else the DLQ record's input
coordinates), `x-original-timestamp` (the DLQ header, else the DLQ record's timestamp) and
`x-replay-signature` = replay_marks.sign(secret, origin, original timestamp, key, value),
exactly the strings and bytes written, which is what the worker verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import ProducerFenced
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from badge_worker import constants as K
from badge_worker import replay_marks
from badge_worker.adapters import kafka_io
from badge_worker.adapters.mongo import DlqReplayMarks
from badge_worker.domain.commands import Stream, decode, decode_body
from badge_worker.settings import Settings

# Headers the DLQ adds (replaced or dropped on the way back) and the replay mark we rewrite.
_DLQ_HEADERS = {K.H_INPUT_TOPIC, K.H_INPUT_PARTITION, K.H_INPUT_OFFSET, K.H_ERROR_CODE, K.H_ERROR_MESSAGE,
                K.H_ERROR_TYPE}
_MARK_HEADERS = {K.H_REPLAY_OF, K.H_ORIGINAL_TIMESTAMP, K.H_REPLAY_SIGNATURE}
_READ_HEADERS = _DLQ_HEADERS | _MARK_HEADERS
SETTLE_TIMEOUT_S = 10.0


class ReplayConflict(RuntimeError):
    """Another `dlq replay` run fenced this one or marked a record of its batch first: the
    batch was aborted (nothing of it replayed); what earlier batches replayed stands."""


@dataclass(frozen=True)
class DlqRecord:
    """A well-formed DLQ record, ready to go back to its input topic."""

    target: str  # the input topic it came from
    origin: str  # x-replay-of to write: "topic/partition/offset" of the first delivery
    original_ts: str  # x-original-timestamp to write (epoch ms, digits)
    code: str | None  # x-error-code
    headers: list[tuple[str, bytes]]  # the headers to keep (without the replay mark)
    key: bytes | None
    value: bytes | None


@dataclass
class ReplayFilter:
    topic: str | None = None
    code: int | None = None
    org: int | None = None
    limit: int | None = None

    def matches(self, record: DlqRecord, settings: Settings) -> bool:
        """Exact matches: input topic, error code, and orgId (read from the JSON value as the
        worker reads it; a value that is not a JSON object with an integer orgId matches no org)."""
        if self.topic is not None and record.target != self.topic:
            return False
        if self.code is not None and record.code != str(self.code):
            return False
        if self.org is not None:
            return org_of(record.value, Stream.CLAIMS if record.target == settings.topic_claims
                          else Stream.EARNS) == self.org
        return True


def org_of(value: bytes | None, stream: Stream) -> int | None:
    """The command's orgId as the worker reads it (commands.decode), or None when there is
    none: not a JSON object, no orgId, not an integer. Never raises, whatever the bytes."""
    try:
        org = getattr(decode(value, stream), "orgId", None)
        if org is None:  # rejected before its orgId was read (a bad requestId, say): read just that
            body = json.loads(value or b"")
            if isinstance(body, dict) and "orgId" in body:
                org = getattr(decode_body({"orgId": body["orgId"]}, stream), "orgId", None)
    except Exception:
        return None
    return org if isinstance(org, int) and not isinstance(org, bool) else None


@dataclass
class ReplayReport:
    scanned: int = 0
    replayed: int = 0  # re-published (with --dry-run: would be)
    skipped: int = 0  # left out by the filters or --limit; replayable later
    already: int = 0  # replayed by an earlier run
    malformed: int = 0  # cannot be replayed; reported in items with a reason
    pending: int = 0  # an earlier run's replay whose outcome cannot be told yet; retried later
    items: list[dict[str, Any]] = field(default_factory=list)


def mark_id(tp: TopicPartition, offset: int) -> str:
    return f"{tp.topic}/{tp.partition}/{offset}"


def _text(headers: list[tuple[str, bytes]], name: str) -> str | None:
    """One of our headers as text; ValueError if repeated or not UTF-8."""
    values = [v for k, v in headers if k == name]
    if len(values) > 1:
        raise ValueError(f"header {name} is repeated")
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"header {name} is not UTF-8") from None


def _is_coordinates(text: str) -> bool:
    parts = text.rsplit("/", 2)
    return len(parts) == 3 and bool(parts[0]) and all(p.isdigit() and p.isascii() for p in parts[1:])


def parse_dlq_record(rec: ConsumerRecord[bytes, bytes], settings: Settings) -> DlqRecord | str:
    """The record ready to re-publish, or why it cannot be (a malformed DLQ record)."""
    headers = [(k, v or b"") for k, v in (rec.headers or ())]
    try:
        named = {name: _text(headers, name) for name in _READ_HEADERS}
    except ValueError as exc:
        return str(exc)
    target = named[K.H_INPUT_TOPIC]
    if not target:
        return f"no {K.H_INPUT_TOPIC} header"
    if target not in settings.input_topics():
        return f"{K.H_INPUT_TOPIC} {target!r} is not an input topic"
    partition, offset = named[K.H_INPUT_PARTITION], named[K.H_INPUT_OFFSET]
    if not (partition and partition.isdigit() and partition.isascii()
            and offset and offset.isdigit() and offset.isascii()):
        return f"{K.H_INPUT_PARTITION}/{K.H_INPUT_OFFSET} missing or not a number"
    original_ts = named[K.H_ORIGINAL_TIMESTAMP]
    if original_ts is None:
        original_ts = str(rec.timestamp)
    elif not (original_ts.isdigit() and original_ts.isascii()):
        return f"{K.H_ORIGINAL_TIMESTAMP} {original_ts!r} is not epoch milliseconds"
    origin = f"{target}/{int(partition)}/{int(offset)}"
    earlier = named[K.H_REPLAY_OF]
    if earlier is not None:  # a replay that failed again: still the first delivery's message
        if not _is_coordinates(earlier):
            return f"{K.H_REPLAY_OF} {earlier!r} is not topic/partition/offset"
        origin = earlier
    kept = [(k, v) for k, v in headers if k not in _READ_HEADERS]
    return DlqRecord(target, origin, original_ts, named[K.H_ERROR_CODE], kept, rec.key, rec.value)


def replay_headers(record: DlqRecord, secret: bytes) -> list[tuple[str, bytes]]:
    """The kept headers plus the replay mark the worker verifies."""
    signature = replay_marks.sign(secret, record.origin, record.original_ts, record.key, record.value)
    return [*record.headers, (K.H_REPLAY_OF, record.origin.encode()),
            (K.H_ORIGINAL_TIMESTAMP, record.original_ts.encode()), (K.H_REPLAY_SIGNATURE, signature.encode())]


def replay_transactional_id(settings: Settings) -> str:
    """One per DLQ topic (not per replay group): each run fences the previous one."""
    return f"{settings.consumer_group}.dlq-replay.{settings.topic_dlq}"


async def replay_committed(checker: AIOKafkaConsumer, mark: dict[str, Any],
                           timeout: float = SETTLE_TIMEOUT_S) -> bool | None:
    """Did the transaction that wrote this PENDING mark commit? True / False / None (cannot
    tell yet). Call only after this run's producer started (which completed any earlier run's
    transaction)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        target = mark["target"]
        tp, offset = TopicPartition(str(target["topic"]), int(target["partition"])), int(target["offset"])
    except (KeyError, TypeError, ValueError):
        return None
    checker.assign([tp])
    if offset < (await checker.beginning_offsets([tp]))[tp]:
        return True  # deleted by retention since: count it as replayed (at most once)
    while True:
        stable = (await checker.end_offsets([tp]))[tp]  # read_committed: the last stable offset
        if offset < stable:
            break
        if loop.time() > deadline:
            return None
        await asyncio.sleep(0.2)
    checker.seek(tp, offset)
    while loop.time() <= deadline:
        got = await checker.getmany(tp, timeout_ms=500, max_records=1)
        for rec in got.get(tp, []):
            return int(rec.offset) == offset
        if await checker.position(tp) >= stable:
            return False  # only aborted records from there to the stable offset
    return None


async def replay_dlq(settings: Settings, flt: ReplayFilter, *, dry_run: bool = False,
                     group: str | None = None, progress: Callable[[int, int], None] | None = None
                     ) -> ReplayReport:
    """Replay what is in the DLQ now (up to its end offsets when called), each record at
    most once (see the module docstring). `progress` is told (offsets done, offsets in all):
    offsets, not records, since transaction markers take offsets too."""
    group_id = group or f"{settings.consumer_group}.dlq-replay"
    show = progress or (lambda _done, _total: None)
    report = ReplayReport()
    run = uuid.uuid4().hex
    await kafka_io.check_security(settings)  # refused credentials: a clear error before anything starts
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri)
    marks = DlqReplayMarks(client[settings.mongodb_database])
    consumer = AIOKafkaConsumer(**kafka_io.client_options(settings), group_id=group_id,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                isolation_level="read_committed")
    checker: AIOKafkaConsumer | None = None  # reads replay targets to settle PENDING marks
    producer = None if dry_run else kafka_io.make_transactional_producer(settings, replay_transactional_id(settings))
    try:
        secret: bytes | None = None  # a dry run signs nothing (and creates no key)
        if producer is not None:
            secret = await replay_marks.signing_key(client[settings.mongodb_database], settings.replay_signing_key)
            await producer.start()  # fences an earlier run: its open transaction is completed now
        await consumer.start()
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
        prefix_open = dict.fromkeys(partitions, True)  # may the committed offset still advance?

        def advance_over(advance: dict[TopicPartition, int], tp: TopicPartition, offset: int) -> None:
            """A settled record: the committed offset moves past it while the prefix is unbroken."""
            if prefix_open[tp]:
                advance[tp] = offset + 1

        async def settle_pending(mark: dict[str, Any]) -> dict[str, Any] | None:
            """The mark once settled: DONE, None (dropped: not replayed) or still PENDING."""
            nonlocal checker
            if producer is None:
                return mark  # a dry run does not fence the run that wrote it: cannot tell
            if checker is None:
                checker = AIOKafkaConsumer(**kafka_io.client_options(settings), group_id=None,
                                           enable_auto_commit=False, isolation_level="read_committed")
                await checker.start()
            committed = await replay_committed(checker, mark)
            if committed is True:
                await marks.mark_done([mark["_id"]])
                return {**mark, "state": DlqReplayMarks.DONE}
            if committed is False:
                await marks.forget(mark["_id"])
                return None
            return mark

        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=500)
            if not batch:
                remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
                continue
            records = [(tp, rec) for tp, recs in batch.items() for rec in recs if rec.offset < ends[tp]]
            found = await marks.find([mark_id(tp, rec.offset) for tp, rec in records])
            advance: dict[TopicPartition, int] = {}
            chosen: list[tuple[TopicPartition, ConsumerRecord[bytes, bytes], DlqRecord]] = []

            for tp, rec in records:
                report.scanned += 1
                where = {"dlq": mark_id(tp, rec.offset), "dlqPartition": tp.partition, "dlqOffset": rec.offset}
                mark = found.get(mark_id(tp, rec.offset))
                if mark is not None and mark.get("state") != DlqReplayMarks.DONE:
                    mark = await settle_pending(mark)
                if mark is not None:
                    if mark.get("state") == DlqReplayMarks.DONE:
                        report.already += 1
                        advance_over(advance, tp, rec.offset)
                    else:
                        report.pending += 1
                        prefix_open[tp] = False
                        report.items.append({"action": "pending", **where, "reason": "an earlier run re-published "
                                             "it and whether that committed cannot be told yet"})
                    continue
                parsed = parse_dlq_record(rec, settings)
                if isinstance(parsed, str):
                    report.malformed += 1
                    advance_over(advance, tp, rec.offset)
                    report.items.append({"action": "malformed", **where, "reason": parsed})
                    continue
                if not flt.matches(parsed, settings) or (flt.limit is not None and report.replayed >= flt.limit):
                    report.skipped += 1
                    prefix_open[tp] = False
                    continue
                report.replayed += 1
                advance_over(advance, tp, rec.offset)
                chosen.append((tp, rec, parsed))
                report.items.append({"action": "would replay" if dry_run else "replayed", **where,
                                     "topic": parsed.target, "origin": parsed.origin, "code": parsed.code})
            if producer is not None and (chosen or advance):
                assert secret is not None
                await producer.begin_transaction()
                try:
                    # Kafka timestamp: now, not the original time (that rides in the signed
                    # header). A record stamped older than the input topic's retention.ms
                    # would be deleted by the broker's next retention check, before the
                    # worker had read it.
                    sent = [await producer.send(p.target, p.value, key=p.key, headers=replay_headers(p, secret))
                            for _, _, p in chosen]
                    written = await asyncio.gather(*sent)
                    try:
                        await marks.insert_pending([
                            {"_id": mark_id(tp, rec.offset), "origin": p.origin, "run": run,
                             "target": {"topic": meta.topic, "partition": meta.partition, "offset": meta.offset}}
                            for (tp, rec, p), meta in zip(chosen, written, strict=True)])
                    except DuplicateKeyError as exc:
                        raise ReplayConflict("another dlq replay marked some of these records first; "
                                             "nothing of this batch was replayed") from exc
                    if advance:
                        await producer.send_offsets_to_transaction(advance, group_id)
                    await producer.commit_transaction()
                except BaseException as exc:
                    with contextlib.suppress(Exception):
                        await producer.abort_transaction()
                    if isinstance(exc, ProducerFenced):
                        raise ReplayConflict("another dlq replay started and fenced this one; nothing of this "
                                             "batch was replayed") from exc
                    raise
                if chosen:
                    await marks.mark_done([mark_id(tp, rec.offset) for tp, rec, _ in chosen])
            done = 0
            for tp in partitions:
                done += min(await consumer.position(tp), ends[tp]) - starts[tp]
            show(done, total)
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
        show(total, total)
        return report
    finally:
        if producer is not None:
            await producer.stop()
        if checker is not None:
            await checker.stop()
        await consumer.stop()
        await client.close()

