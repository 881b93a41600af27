"""The consume loop: fetch a batch, process partitions concurrently, and commit each
partition's outcomes and input offsets in one Kafka transaction.

Exactly once: outcomes become visible to read_committed subscribers only together with the
offsets of the inputs that produced them. A worker killed mid-batch leaves an open
transaction that the partition's next owner aborts (same transactional id), and the inputs
are processed again; their effects are idempotent and their outcomes are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced
from pymongo import AsyncMongoClient
from redis.asyncio import BlockingConnectionPool, Redis

from badge_worker.adapters import kafka_io
from badge_worker.adapters.mongo import Repositories
from badge_worker.adapters.redis_store import RedisStore
from badge_worker.errors import is_infra_error
from badge_worker.health import HealthServer
from badge_worker.metrics import BATCH_RECORDS, BATCH_SECONDS, DLQ, INFRA_RETRIES, LAG, OUTCOMES, READY
from badge_worker.service.messages import InputRecord, Result
from badge_worker.service.processor import Processor
from badge_worker.settings import Settings, redact

log = structlog.get_logger("badge_worker.worker")


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self.worker.partitions_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self.worker.partitions_assigned(list(assigned))


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopping = asyncio.Event()
        self.producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self._producer_locks: dict[TopicPartition, asyncio.Lock] = {}
        self.backoff: dict[TopicPartition, tuple[float, float]] = {}  # tp -> (resume at, last delay)
        self.ready = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.consumer: AIOKafkaConsumer | None = None
        self.mongo: AsyncMongoClient | None = None  # type: ignore[type-arg]
        self.redis: Redis | None = None
        self.processor: Processor | None = None
        self.repos: Repositories | None = None

    # ------------------------------------------------------------------ lifecycle
    async def connect(self) -> None:
        s = self.settings
        log.info("connecting", kafka=s.kafka_bootstrap_servers, redis=redact(s.redis_url),
                 mongodb=redact(s.mongodb_uri), database=s.mongodb_database, group=s.consumer_group)
        # socketTimeoutMS: a request the server never answers becomes a retryable NetworkTimeout
        self.mongo = AsyncMongoClient(s.mongodb_uri, serverSelectionTimeoutMS=5000, socketTimeoutMS=30_000,
                                      tz_aware=False)
        self.repos = Repositories(self.mongo[s.mongodb_database])
        # A blocking pool: when every connection is busy, callers wait (backpressure) instead of failing.
        pool = BlockingConnectionPool.from_url(s.redis_url, max_connections=s.redis_max_connections, timeout=30,
                                               socket_timeout=10, socket_connect_timeout=5, health_check_interval=15)
        self.redis = Redis(connection_pool=pool)
        store = RedisStore(self.redis, prefix=s.redis_key_prefix)
        self.processor = Processor(self.repos, store, badge_cache_ttl=s.badge_cache_ttl_s,
                                   concurrency=s.concurrency, max_attempts=s.max_attempts)
        delay = s.backoff_initial_s
        while not self.stopping.is_set():
            try:
                await self.repos.ensure_indexes()
                await store.ping()
                await kafka_io.ensure_topics(s)
                return
            except Exception as exc:
                if not is_infra_error(exc) and not isinstance(exc, KafkaError):
                    raise
                log.warning("dependencies_unavailable", error=type(exc).__name__, retry_in=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                delay = min(delay * 2, s.backoff_max_s)

    async def run(self) -> None:
        """Run until stop() (SIGTERM/SIGINT): finish the batch in hand, commit, close."""
        health = HealthServer(self.settings.http_port, lambda: self.ready) if self.settings.http_port else None
        if health:
            await health.start()
        try:
            await self.connect()
            if self.stopping.is_set():
                return
            self.consumer = kafka_io.make_consumer(self.settings)
            self.consumer.subscribe(self.settings.input_topics(), listener=_Rebalance(self))
            await self.consumer.start()
            log.info("worker_started", topics=self.settings.input_topics())
            self.ready = True
            READY.set(1)
            while not self.stopping.is_set():
                await self._poll_once()
        finally:
            self.ready = False
            READY.set(0)
            await self._close(health)

    async def _close(self, health: HealthServer | None) -> None:
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.stop()
        for tp in list(self.producers):
            await self._drop_producer(tp)
        if self.redis is not None:
            await self.redis.aclose()
        if self.mongo is not None:
            await self.mongo.close()
        if health:
            await health.stop()
        log.info("worker_stopped")

    def stop(self) -> None:
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)  # operators: where is it waiting?


    # ------------------------------------------------------------------ rebalance
    async def partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            await self._producer_for(tp)
        log.info("partitions_assigned", partitions=[f"{tp.topic}/{tp.partition}" for tp in assigned])

    async def _producer_for(self, tp: TopicPartition) -> AIOKafkaProducer:
        # The rebalance callback and the first batch of a partition may both ask at once;
        # two producers with one transactional id would fence each other.
        async with self._producer_locks.setdefault(tp, asyncio.Lock()):
            return self.producers.get(tp) or await self._start_producer(tp)

    async def _start_producer(self, tp: TopicPartition) -> AIOKafkaProducer:
        producer = kafka_io.make_transactional_producer(
            self.settings, kafka_io.partition_transactional_id(self.settings, tp.topic, tp.partition))
        delay = self.settings.backoff_initial_s
        while True:
            try:
                await producer.start()  # init_transactions: fences the previous owner
                break
            except KafkaError as exc:
                log.warning("producer_start_failed", topic=tp.topic, partition=tp.partition,
                            error=type(exc).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.backoff_max_s)
        self.producers[tp] = producer
        return producer

    async def partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Let the batch in hand finish and commit (it still owns its partitions); if it
        # cannot within the limit, its transactions are fenced by the next owner anyway.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=30)
        for tp in revoked:
            self.backoff.pop(tp, None)
            await self._drop_producer(tp)
        log.info("partitions_revoked", partitions=[f"{tp.topic}/{tp.partition}" for tp in revoked])

    async def _drop_producer(self, tp: TopicPartition) -> None:
        producer = self.producers.pop(tp, None)
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()

    # ------------------------------------------------------------------ batches
    async def _poll_once(self) -> None:
        assert self.consumer is not None
        now = time.monotonic()
        for tp, (resume_at, _) in list(self.backoff.items()):
            if resume_at <= now and tp in self.consumer.assignment():
                self.consumer.resume(tp)
        batch = await self.consumer.getmany(timeout_ms=self.settings.fetch_timeout_ms,
                                            max_records=self.settings.batch_max_records)
        if not batch:
            return
        self._idle.clear()
        try:
            await asyncio.gather(*(self._process_partition(tp, records) for tp, records in batch.items()))
        finally:
            self._idle.set()
        self.ready = not self.backoff
        READY.set(1 if self.ready else 0)

    async def _process_partition(self, tp: TopicPartition, raw: list) -> None:  # type: ignore[type-arg]
        assert self.consumer is not None and self.processor is not None and self.repos is not None
        records = [kafka_io.to_input(r, self.settings) for r in raw]
        if tp not in self.consumer.assignment():  # revoked while fetched: the next owner has them
            return
        producer = await self._producer_for(tp)
        started = time.perf_counter()
        try:
            results = await self.processor.process_batch(records)
            # 500s are not stored: a DLQ replay of them is meant to run them again
            await self.repos.ledger_store_outcomes(
                (r.ledger, r.outcome) for r in results if r.ledger is not None and not r.replayed and r.code != 500)
            await self._commit(tp, producer, records, results)
        except Exception as exc:
            if not (is_infra_error(exc) or isinstance(exc, KafkaError)):
                raise
            if isinstance(exc, KafkaError):  # fenced, or in an unknown state: start afresh
                await self._drop_producer(tp)
            if isinstance(exc, ProducerFenced):
                log.warning("fenced", topic=tp.topic, partition=tp.partition)
            if tp in self.consumer.assignment():  # still ours: nothing was committed, try again
                self._back_off(tp, records[0].offset, exc)
            return
        self.backoff.pop(tp, None)
        elapsed = time.perf_counter() - started
        BATCH_SECONDS.observe(elapsed)
        BATCH_RECORDS.observe(len(records))
        for r in results:
            OUTCOMES.labels(r.record.topic, str(r.code)).inc()
            if r.to_dlq:
                DLQ.labels(r.record.topic).inc()
        highwater = self.consumer.highwater(tp)
        if highwater is not None:
            LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - (records[-1].offset + 1)))
        log.debug("batch_committed", topic=tp.topic, partition=tp.partition, records=len(records),
                  seconds=round(elapsed, 4))

    async def _commit(self, tp: TopicPartition, producer: AIOKafkaProducer, records: list[InputRecord],
                      results: list[Result]) -> None:
        s = self.settings
        async with producer.transaction():
            for r in results:
                key = r.record.key
                headers = kafka_io.outcome_headers(r.record)
                topic = s.topic_results if r.ok else s.topic_errors
                await producer.send(topic, kafka_io.encode(r.outcome), key=key, headers=headers)
                if r.to_dlq:
                    await producer.send(s.topic_dlq, r.record.value, key=key, headers=kafka_io.dlq_headers(r))
                    log.warning("sent_to_dlq", topic=r.record.topic, partition=r.record.partition,
                                offset=r.record.offset, code=r.code, orgId=r.outcome.get("orgId"),
                                requestId=r.outcome.get("requestId"))
            await producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, s.consumer_group)

    def _back_off(self, tp: TopicPartition, first_offset: int, exc: BaseException) -> None:
        """Nothing was committed: rewind the partition, pause it, and try again later."""
        assert self.consumer is not None
        _, last = self.backoff.get(tp, (0.0, 0.0))
        delay = min(max(self.settings.backoff_initial_s, last * 2), self.settings.backoff_max_s)
        self.backoff[tp] = (time.monotonic() + delay, delay)
        self.ready = False
        READY.set(0)
        INFRA_RETRIES.inc()
        if tp in self.consumer.assignment():
            self.consumer.seek(tp, first_offset)
            self.consumer.pause(tp)
        log.warning("infrastructure_unavailable", topic=tp.topic, partition=tp.partition,
                    error=type(exc).__name__, reason=str(exc)[:200], retry_in=delay)


async def run_worker(settings: Settings) -> None:
    worker = Worker(settings)
    worker.install_signal_handlers()
    await worker.run()


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
