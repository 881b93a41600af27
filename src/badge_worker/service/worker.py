"""The consume loop: fetch a batch, process its partitions concurrently, and commit each
partition's outcomes and input offsets in one Kafka transaction (service/commit.py).

Exactly once: outcomes become visible to read_committed subscribers only together with the
offsets of the inputs that produced them. A worker killed mid-batch leaves an open
transaction that the partition's next owner aborts (same transactional id), and the inputs
are processed again; their effects are idempotent and their outcomes are the same.
Partition ownership, fencing and revokes are in service/ownership.py.

Every wait has a bound: Kafka calls (`Bounds`), the revoke callback (cancels the work in
flight), and shutdown (`SHUTDOWN_GRACE_S`: the batch in hand is cancelled past it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Sequence, Set
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import InvalidProducerEpoch, KafkaError, ProducerFenced
from pymongo import AsyncMongoClient

from badge_worker import replay_marks, tracing
from badge_worker.adapters import kafka_io, redis_client
from badge_worker.adapters.mongo import Repositories
from badge_worker.adapters.redis_store import RedisStore
from badge_worker.adapters.request_cache import RequestCache
from badge_worker.errors import is_infra_error, is_kafka_infra_error
from badge_worker.health import HealthServer
from badge_worker.metrics import BATCH_RECORDS, BATCH_SECONDS, DLQ, INFRA_RETRIES, LAG, OUTCOMES, READY
from badge_worker.service import messages
from badge_worker.service.commit import commit_batch
from badge_worker.service.messages import InputRecord
from badge_worker.service.ownership import Bounds, NotOwned, Ownership, Partition, bounded
from badge_worker.service.processor import Processor
from badge_worker.settings import Settings, redact
from badge_worker.tracing import BatchSpans

log = structlog.get_logger("badge_worker.worker")

FENCED_ERRORS = (ProducerFenced, InvalidProducerEpoch)
# how long a fetch waits for records while other partitions' batches are in flight: a
# partition whose batch ends is fetched again within this
BUSY_FETCH_WAIT_MS = 5


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ownership: Ownership) -> None:
        self.ownership = ownership

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self.ownership.revoke(list(revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.ownership.assign(list(assigned))


class Worker:
    def __init__(self, settings: Settings, *, hard_exit: bool = False) -> None:
        self.settings = settings
        self.hard_exit = hard_exit  # a process of its own: exit even if closing is stuck
        self.stopping = asyncio.Event()
        self.bounds = Bounds(kafka_call=settings.kafka_call_timeout_s, revoke=settings.revoke_timeout_s)
        self.ownership = Ownership(settings, self.bounds)
        self.ready = False
        self.consumer: AIOKafkaConsumer | None = None
        self.mongo: AsyncMongoClient | None = None  # type: ignore[type-arg]
        self.redis: Any = None  # redis_client.RedisClient
        self.processor: Processor | None = None
        self.repos: Repositories | None = None
        self.replay_secret: bytes | None = None
        self.size_limits: dict[str, int] = {}  # max.message.bytes of the output topics
        self.requests: RequestCache | None = None
        self.last_poll = time.monotonic()  # liveness: the consume loop goes round
        self._batches: dict[TopicPartition, asyncio.Task[None]] = {}  # each partition's batch in flight
        self.tracing = tracing.from_env()  # None unless the otel extra is installed and enabled

    # ------------------------------------------------------------------ lifecycle
    async def connect(self) -> None:
        s = self.settings
        log.info("connecting", kafka=s.kafka_bootstrap_servers, kafka_security_protocol=s.kafka_security_protocol,
                 kafka_sasl_mechanism=s.kafka_sasl_mechanism if s.kafka_sasl_username else None,
                 kafka_sasl_username=s.kafka_sasl_username, redis=redact(s.redis_url),
                 mongodb=redact(s.mongodb_uri), database=s.mongodb_database, group=s.consumer_group,
                 group_instance_id=s.group_instance_id)
        # socketTimeoutMS: a request the server never answers becomes a retryable NetworkTimeout
        self.mongo = AsyncMongoClient(s.mongodb_uri, serverSelectionTimeoutMS=5000,
                                      socketTimeoutMS=s.mongodb_socket_timeout_ms, tz_aware=False)
        self.repos = Repositories(self.mongo[s.mongodb_database], write_flushes=s.mongodb_write_flushes)
        self.redis = redis_client.connect(s)
        store = RedisStore(self.redis, prefix=s.redis_key_prefix)
        self.requests = RequestCache(self.redis, s.redis_key_prefix, s.outcome_cache_ttl_s, pipe=store.pipe)
        self.processor = Processor(self.repos, store, self.requests, badge_cache_ttl=s.badge_cache_ttl_s,
                                   concurrency=s.concurrency, max_attempts=s.max_attempts)
        delay = s.backoff_initial_s
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self._prepare(store), 60)
                return
            except kafka_io.KafkaSecurityError:
                raise  # refused credentials or TLS: backing off would only hide it (cli.py logs it)
            except Exception as exc:
                if not is_infra_error(exc) and not isinstance(exc, KafkaError):
                    raise
                log.warning("dependencies_unavailable", error=type(exc).__name__, reason=str(exc)[:200],
                            retry_in=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                delay = min(delay * 2, s.backoff_max_s)

    async def _prepare(self, store: RedisStore) -> None:
        assert self.repos is not None
        await self.repos.ensure_indexes()
        await store.ping()
        await kafka_io.ensure_topics(self.settings)
        self.size_limits = await kafka_io.message_size_limits(self.settings, self.settings.output_topics())
        self.replay_secret = await replay_marks.signing_key(self.repos.db, self.settings.replay_signing_key)

    async def run(self) -> None:
        """Run until stop() (SIGTERM/SIGINT): finish the batch in hand, commit, close."""
        health = (HealthServer(self.settings.http_port, lambda: self.ready, self.is_alive)
                  if self.settings.http_port else None)
        if health:
            await health.start()
        try:
            await self.connect()
            if self.stopping.is_set():
                return
            self.consumer = kafka_io.make_consumer(self.settings)
            self.ownership.consumer = self.consumer
            self.consumer.subscribe(self.settings.input_topics(), listener=_Rebalance(self.ownership))
            await bounded(self.consumer.start(), self.bounds.kafka_call * 2, "consumer start")
            log.info("worker_started", topics=self.settings.input_topics())
            self.ready = True
            READY.set(1)
            while not self.stopping.is_set():
                self.last_poll = time.monotonic()
                await self._poll_once()
            await self._drain()  # the batches in hand finish and commit (or are cancelled past the grace)
        finally:
            self.ready = False
            READY.set(0)
            await self._close(health)

    def is_alive(self) -> bool:
        """False when the consume loop has not gone round for a long time (a stuck worker)."""
        return time.monotonic() - self.last_poll < self.settings.liveness_timeout_s

    async def _close(self, health: HealthServer | None) -> None:
        async def quietly(what: str, awaitable: Any, seconds: float = 10.0) -> None:
            try:
                await asyncio.wait_for(awaitable, seconds)
            except BaseException as exc:  # closing: nothing left to protect
                log.warning("close_failed", what=what, error=type(exc).__name__)

        # Bounded step by step (≤ ~17 s in all), so that a SIGTERM ends within the pod's grace.
        if self.consumer is not None:
            await quietly("consumer", self.consumer.stop(), 5)
        await quietly("producers", self.ownership.close(), self.bounds.producer_stop + 2)
        if self.processor is not None:
            await quietly("redis pipelines", self.processor.store.aclose(), 2)
        if self.redis is not None:
            await quietly("redis", self.redis.aclose(), 2)
        if self.mongo is not None:
            await quietly("mongodb", self.mongo.close(), 2)
        if health:
            await quietly("health", health.stop(), 1)
        if self.tracing is not None:  # flush the spans still queued for export
            await quietly("tracing", asyncio.to_thread(self.tracing.shutdown), 5)
        log.info("worker_stopped")

    def stop(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        log.info("worker_stopping", grace_s=self.settings.shutdown_grace_s)
        # Past the grace period the batch in hand is cancelled: nothing of it is committed,
        # and the next owner processes it again.
        loop = asyncio.get_running_loop()
        loop.call_later(self.settings.shutdown_grace_s, self._cancel_batches)
        if self.hard_exit:
            loop.call_later(self.settings.shutdown_grace_s + 25, self._exit_now)

    def _exit_now(self) -> None:
        """The last resort, if closing itself hangs: exiting is safe (nothing uncommitted is lost)."""
        log.error("shutdown_stuck", after_s=self.settings.shutdown_grace_s + 25)
        dump_tasks()
        os._exit(70)

    def _cancel_batches(self) -> None:
        for part in list(self.ownership.partitions.values()):
            if part.batch is not None and not part.batch.done():
                log.warning("shutdown_grace_exceeded", topic=part.tp.topic, partition=part.tp.partition)
                part.batch.cancel()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)  # operators: where is it waiting?

    # ------------------------------------------------------------------ batches
    async def _poll_once(self) -> None:
        """One turn of the consume loop: fetch for the partitions with no batch in flight and
        start a batch for each that got records. A partition's next batch starts as soon as its
        last one has committed: rounds that waited for every partition's batch made each record
        wait for the slowest one (at 1,000 earns/s a partition's batch took 0.13 s at the median,
        a round as long as the slowest of eight)."""
        assert self.consumer is not None
        now = time.monotonic()
        assignment = self.consumer.assignment()
        for part in list(self.ownership.partitions.values()):
            if part.resume_at and part.resume_at <= now and not part.fenced and part.tp in assignment:
                part.resume_at = 0.0
                if not part.unreadable:  # a parked partition stays paused (see _before_unreadable)
                    self.consumer.resume(part.tp)
        busy = {tp for tp, task in self._batches.items() if not task.done()}
        try:
            batch = await self._fetch_round(busy)
            batch.update(await self._before_unreadable(busy))
        except Exception as exc:
            if is_infra_error(exc) or isinstance(exc, KafkaError):
                log.warning("fetch_failed", error=type(exc).__name__, reason=str(exc)[:200])
                await asyncio.sleep(self.settings.backoff_initial_s)
            else:  # the client could not even parse a record (e.g. a header name that is not UTF-8)
                await self._drain()  # isolating seeks every partition: none may have a batch in flight
                await self._isolate_unreadable(exc)
            return
        for tp, raw in batch.items():
            owned = self.ownership.get(tp)
            if owned is None or owned.fenced or owned.retired or not raw:
                continue  # revoked while fetched: the next owner has these records
            part = owned
            part.batch = task = asyncio.create_task(self._process_chunks(part, raw), name=f"batch {part.name}")
            self._batches[tp] = task
            task.add_done_callback(_batch_ended)
        self.ready = not any(p.resume_at or p.fenced or p.unreadable for p in self.ownership.partitions.values())
        READY.set(1 if self.ready else 0)

    async def _drain(self) -> None:
        """Wait for every batch in flight (each is bounded, and cancelled past the shutdown grace)."""
        running = [task for task in self._batches.values() if not task.done()]
        if running:
            await asyncio.wait(running)
        self._batches = {tp: task for tp, task in self._batches.items() if not task.done()}

    async def _fetch_round(self, busy: Set[TopicPartition] = frozenset()) -> dict[TopicPartition, list[Any]]:
        """Up to one batch of every partition that has records and no batch in flight (`busy`):
        wait for any, then take the rest of each partition's buffer up to a batch. The client
        hands its buffer out partition by partition, so one getmany of a batch per partition
        gave a few partitions four batches in a row while the others, records buffered, waited
        (seen after a restart: three of eight partitions idle through the first round, and the
        in-flight records of the late ones read from MongoDB in a second resume load).

        While batches are in flight the wait is short, so that a partition whose batch has
        just committed is fetched again at once; when every partition is busy, it waits for one
        to finish instead."""
        assert self.consumer is not None
        consumer, size = self.consumer, self.settings.batch_max_records
        free = sorted(consumer.assignment() - consumer.paused() - busy)
        if busy and not free:
            await asyncio.wait([self._batches[tp] for tp in busy], timeout=self.settings.fetch_timeout_ms / 1000,
                               return_when=asyncio.FIRST_COMPLETED)
            return {}
        wait_ms = min(self.settings.fetch_timeout_ms, BUSY_FETCH_WAIT_MS) if busy else self.settings.fetch_timeout_ms
        batch: dict[TopicPartition, list[Any]] = await bounded(
            consumer.getmany(*free, timeout_ms=wait_ms, max_records=size), self.bounds.kafka_call, "fetch")
        if not batch:
            return batch
        try:
            for tp in sorted(consumer.assignment() - consumer.paused() - busy):
                have = len(batch.get(tp, ()))
                if have >= size:
                    continue
                more = (await bounded(consumer.getmany(tp, timeout_ms=0, max_records=size - have),
                                      self.bounds.kafka_call, "fetch")).get(tp)
                if more:
                    batch[tp] = [*batch.get(tp, ()), *more]
        except BaseException:
            # The client has moved past what this round took: put every partition back to its
            # first record, or a failed top-up would lose the records taken before it.
            for tp, records in batch.items():
                with contextlib.suppress(Exception):
                    consumer.seek(tp, records[0].offset)
            raise
        return batch

    async def _before_unreadable(self, busy: Set[TopicPartition] = frozenset()) -> dict[TopicPartition, list[Any]]:
        """The readable records ahead of an unreadable one, fetched exactly up to it."""
        assert self.consumer is not None
        fetched: dict[TopicPartition, list[Any]] = {}
        for part in list(self.ownership.partitions.values()):
            if not part.unreadable or part.readable_left <= 0 or part.resume_at or part.tp in busy:
                continue
            self.consumer.resume(part.tp)
            try:
                got = await bounded(self.consumer.getmany(part.tp, timeout_ms=self.settings.fetch_timeout_ms,
                                                          max_records=part.readable_left),
                                    self.bounds.kafka_call, "fetch")
            finally:
                self.consumer.pause(part.tp)
            if got.get(part.tp):
                fetched[part.tp] = got[part.tp]
        return fetched

    async def _isolate_unreadable(self, exc: Exception) -> None:
        """Find the partition whose records the Kafka client cannot parse and park it (paused,
        /readyz 503, an error log naming it) so that the others go on. Skipping the record
        needs an operator: it cannot be read, so it cannot be given an outcome here."""
        assert self.consumer is not None
        consumer = self.consumer
        active = sorted(consumer.assignment() - consumer.paused())
        # The failed fetch may have moved other partitions past records it never returned:
        # every partition goes back to what this worker last committed (or the group did).
        starts: dict[TopicPartition, int] = {}
        for tp in active:
            part = self.ownership.get(tp)
            start = part.start_offset if part is not None else None
            if start is None:
                with contextlib.suppress(Exception):
                    start = await bounded(consumer.committed(tp), self.bounds.kafka_call, "committed offset")
            if start is None:  # nothing committed yet: the group starts at the beginning
                with contextlib.suppress(Exception):
                    start = (await bounded(consumer.beginning_offsets([tp]), self.bounds.kafka_call,
                                           "beginning offset"))[tp]
            if start is not None:
                starts[tp] = start
                with contextlib.suppress(Exception):
                    consumer.seek(tp, start)
        for tp in active:
            unreadable, position, readable = False, None, 0
            for _ in range(self.settings.batch_max_records):  # one record at a time, up to a batch
                try:
                    got = await bounded(consumer.getmany(tp, timeout_ms=200, max_records=1),
                                        self.bounds.kafka_call, "fetch")
                except Exception as probe_exc:
                    if is_infra_error(probe_exc) or isinstance(probe_exc, KafkaError):
                        break
                    unreadable = True
                    with contextlib.suppress(Exception):  # where the client stopped: the unreadable record
                        position = await bounded(consumer.position(tp), self.bounds.kafka_call, "position")
                    break
                if not got.get(tp):
                    break
                readable += len(got[tp])
            with contextlib.suppress(Exception):  # read ahead while probing: read them again later
                if tp in starts:
                    consumer.seek(tp, starts[tp])
                if unreadable:
                    consumer.pause(tp)
            if unreadable:
                part = self.ownership.get(tp)
                if part is not None:
                    part.unreadable = True
                    part.readable_left = readable  # the records before it still get processed
                log.error("unreadable_record", topic=tp.topic, partition=tp.partition, position=position,
                          committed=starts.get(tp),
                          error=type(exc).__name__, reason=str(exc)[:300])

    async def _process_chunks(self, part: Partition, raw: list[Any]) -> None:
        """A partition's records in batches of at most BATCH_MAX_RECORDS, one after the other;
        after a batch that did not commit (backed off, fenced, revoked) the rest waits for
        the next fetch, which starts again from where that batch began."""
        size = self.settings.batch_max_records
        for start in range(0, len(raw), size):
            chunk = raw[start:start + size]
            await self._process_partition(part, chunk)
            done = part.start_offset is not None and part.start_offset > chunk[-1].offset
            if not done or part.fenced or part.retired or part.resume_at or self.stopping.is_set():
                if done and start + size < len(raw):  # stopping: the rest is fetched again later
                    with contextlib.suppress(Exception):
                        self.consumer.seek(part.tp, raw[start + size].offset)  # type: ignore[union-attr]
                return

    async def _process_partition(self, part: Partition, raw: list[Any]) -> None:
        assert self.consumer is not None and self.processor is not None and self.repos is not None
        assert self.requests is not None
        records = [kafka_io.to_input(r, self.settings, replay_secret=self.replay_secret) for r in raw]
        started = time.perf_counter()
        spans: BatchSpans | None = None
        try:
            producer = await self.ownership.ready(part)
            records = self._from_committed(part, records)
            if not records:
                return
            spans = self._start_spans(part, records)
            # bounded: a batch that cannot finish is retried, never left to hold the loop
            results = await bounded(self.processor.process_batch(records), self.settings.batch_timeout_s,
                                    "partition batch")
            processed = time.perf_counter()
            if spans is not None:
                for r in results:
                    r.span_id = spans.span_id(r.record.offset)
            decided = messages.decided(results)
            # MongoDB keeps the first outcome; if another run of a message stored one first,
            # that one is published (and cached), so every copy says the same.
            stored = await self.repos.ledger_store_outcomes(messages.outcome_documents(decided))
            for r in decided:
                if r.ledger in stored:
                    r.outcome = stored[r.ledger]
            await self.requests.remember((r.outcome["orgId"], r.outcome["requestId"], r.outcome) for r in decided)
            stored_at = time.perf_counter()
            await commit_batch(producer, self.settings, part.tp, records, results, self.bounds, self.size_limits)
        except BaseException as exc:
            if spans is not None:
                spans.finish(error=exc)
            if not isinstance(exc, Exception):
                raise  # cancelled (revoked, or shutdown past its grace): nothing was committed
            await self._batch_failed(part, records, exc)
            return
        if spans is not None:
            spans.finish(results=results)
        part.delay = 0.0
        part.start_offset = records[-1].offset + 1
        if part.unreadable:
            part.readable_left = max(0, part.readable_left - len(records))
        elapsed = time.perf_counter() - started
        BATCH_SECONDS.observe(elapsed)
        BATCH_RECORDS.observe(len(records))
        for r in results:
            OUTCOMES.labels(r.record.topic, str(r.code)).inc()
            if r.to_dlq:
                DLQ.labels(r.record.topic).inc()
        highwater = self.consumer.highwater(part.tp)
        if highwater is not None:
            LAG.labels(part.tp.topic, str(part.tp.partition)).set(max(0, highwater - (records[-1].offset + 1)))
        log.debug("batch_committed", topic=part.tp.topic, partition=part.tp.partition, records=len(records),
                  seconds=round(elapsed, 4), process_s=round(processed - started, 4),
                  store_s=round(stored_at - processed, 4), commit_s=round(started + elapsed - stored_at, 4),
                  # how long the first record waited (by its Kafka timestamp) before the batch ended:
                  # with the seconds above, where a record's produce->outcome time goes
                  first_record_age_s=round(time.time() - records[0].timestamp_ms / 1000, 4))

    async def _batch_failed(self, part: Partition, records: list[InputRecord], exc: Exception) -> None:
        """Nothing of the batch was committed: fence, or rewind and back off."""
        assert self.consumer is not None
        if isinstance(exc, NotOwned):
            if part.retired:  # revoked: the next owner starts from the committed offset
                return
            # Not ours any more (or not sure): rewind, pause and ask the group what we own.
            if records and part.tp in self.consumer.assignment():
                with contextlib.suppress(Exception):
                    self.consumer.seek(part.tp, records[0].offset)
            self.ownership.fence(part)
            return
        if isinstance(exc, FENCED_ERRORS):
            self.ownership.fence(part)
            return
        if isinstance(exc, TimeoutError) or is_kafka_infra_error(exc):
            await self.ownership.reset_producer(part)  # its transaction state is unknown
        if not is_infra_error(exc):
            log.error("batch_failed", topic=part.tp.topic, partition=part.tp.partition, exc_info=exc)
        self._back_off(part, records[0].offset if records else None, exc)

    def _start_spans(self, part: Partition, records: list[InputRecord]) -> BatchSpans | None:
        if self.tracing is None or not records:
            return None
        try:
            return BatchSpans(self.tracing, part.tp, records, self.settings.consumer_group)
        except Exception as exc:  # tracing must never hold a partition: process untraced
            log.warning("tracing_failed", error=type(exc).__name__, reason=str(exc)[:200])
            return None

    def _from_committed(self, part: Partition, records: list[InputRecord]) -> list[InputRecord]:
        """Drop what is below the committed offset read after fencing the previous owner: it
        committed those while we were joining. (Above it, gaps are normal: transaction
        markers take offsets too.)"""
        start = part.start_offset
        if start is None or records[0].offset >= start:
            return records
        kept = [r for r in records if r.offset >= start]
        log.info("skipped_committed", topic=part.tp.topic, partition=part.tp.partition,
                 records=len(records) - len(kept), committed=start)
        return kept

    def _back_off(self, part: Partition, first_offset: int | None, exc: BaseException) -> None:
        """Nothing was committed: rewind the partition, pause it, and try again later."""
        assert self.consumer is not None
        delay = min(max(self.settings.backoff_initial_s, part.delay * 2), self.settings.backoff_max_s)
        part.delay = delay
        part.resume_at = time.monotonic() + delay
        self.ready = False
        READY.set(0)
        INFRA_RETRIES.inc()
        if part.tp in self.consumer.assignment() and not part.retired:
            if first_offset is not None:
                self.consumer.seek(part.tp, first_offset)
            self.consumer.pause(part.tp)
        log.warning("infrastructure_unavailable", topic=part.tp.topic, partition=part.tp.partition,
                    error=type(exc).__name__, reason=str(exc)[:200], retry_in=delay)


async def run_worker(settings: Settings) -> None:
    worker = Worker(settings, hard_exit=True)
    worker.install_signal_handlers()
    await worker.run()


def _batch_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:  # pragma: no cover - a bug
        log.error("batch_task_failed", error=repr(task.exception()))


def dump_tasks() -> None:
    """Log where every asyncio task is waiting, innermost call last (kill -USR1 <pid>)."""
    for task in asyncio.all_tasks():
        frames: list[str] = []
        coro: Any = task.get_coro()
        while coro is not None and len(frames) < 30:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is not None:
                frames.append(f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno} {frame.f_code.co_name}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        log.warning("task_stack", task=task.get_name(), stack=frames)
