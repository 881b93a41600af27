"""Which input partitions this process owns, and the transactional producer of each.

A partition is owned from `assign` to `revoke`. Its producer (transactional id
`group.topic.partition`) is started in the background as soon as it is assigned:
`init_transactions` fences the previous owner and ends its open transaction, and only then
is the committed offset read again, so records the previous owner committed while we were
joining are dropped instead of processed twice.

Rules that keep fencing free of holes:
- a fenced producer is never re-created for the same assignment: the partition stays
  paused until the group hands it out again (a rejoin is requested at once);
- on revoke, the batch in flight is cancelled and awaited (bounded) before the revoke
  returns, and the producer is stopped only after that batch has ended;
- every call that can wait on the network has a bound (`Bounds`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from badge_worker.adapters import kafka_io
from badge_worker.settings import Settings

log = structlog.get_logger("badge_worker.ownership")

T = TypeVar("T")


@dataclass(frozen=True)
class Bounds:
    """How long each kind of wait may take (seconds)."""

    kafka_call: float = 30.0  # one producer/consumer request
    producer_start: float = 30.0  # init_transactions (may wait for the previous owner's transaction)
    revoke: float = 5.0  # cancel the batches in flight of revoked partitions
    abort: float = 3.0  # abort a transaction on the way out (below `revoke`)
    producer_stop: float = 5.0


async def bounded(awaitable: Awaitable[T], seconds: float, what: str) -> T:
    """Await with a limit; a stuck call becomes a TimeoutError (an outage), never a hang."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError as exc:
        raise TimeoutError(f"{what} took more than {seconds:g} s") from exc


class NotOwned(Exception):
    """The partition was revoked or fenced while its producer was starting."""


@dataclass(eq=False)
class Partition:
    tp: TopicPartition
    generation: int
    kafka_generation: int | None = None  # the group generation that assigned it
    producer: AIOKafkaProducer | None = None
    start_offset: int | None = None  # committed offset, read after init_transactions
    fenced: bool = False
    starter: asyncio.Task[None] | None = None
    batch: asyncio.Task[None] | None = None
    resume_at: float = 0.0  # backoff: paused until then
    delay: float = 0.0  # last backoff delay
    retired: bool = False
    unreadable: bool = False  # the Kafka client cannot parse a record here (worker._isolate_unreadable)
    readable_left: int = 0  # records ahead of the unreadable one, still to process

    @property
    def name(self) -> str:
        return f"{self.tp.topic}/{self.tp.partition}"


class Ownership:
    def __init__(self, settings: Settings, bounds: Bounds | None = None) -> None:
        self.settings = settings
        self.bounds = bounds or Bounds()
        self.consumer: AIOKafkaConsumer | None = None
        self.partitions: dict[TopicPartition, Partition] = {}
        self.generation = 0
        self._retiring: set[asyncio.Task[None]] = set()
        self.on_fenced: Callable[[Partition], None] | None = None

    def get(self, tp: TopicPartition) -> Partition | None:
        return self.partitions.get(tp)

    # ------------------------------------------------------------------ assign
    def assign(self, assigned: list[TopicPartition]) -> None:
        """Take the partitions; their producers start in the background (the callback must
        return quickly, or the next rebalance would wait for it)."""
        self.generation += 1
        for tp in assigned:
            old = self.partitions.pop(tp, None)
            if old is not None:  # assigned again without a revoke in between: start afresh
                self._retire(old)
            part = Partition(tp, self.generation, kafka_generation=self._kafka_generation())
            part.starter = asyncio.create_task(self._start(part), name=f"start-producer {part.name}")
            self.partitions[tp] = part
        log.info("partitions_assigned", partitions=[f"{tp.topic}/{tp.partition}" for tp in assigned],
                 generation=self.generation)

    async def _start(self, part: Partition) -> None:
        delay = self.settings.backoff_initial_s
        while True:
            producer = kafka_io.make_transactional_producer(
                self.settings, kafka_io.partition_transactional_id(self.settings, part.tp.topic, part.tp.partition))
            try:
                await bounded(producer.start(), self.bounds.producer_start, "producer start")
                committed = await bounded(self._consumer().committed(part.tp), self.bounds.kafka_call,
                                          "committed offset")
                break
            except asyncio.CancelledError:
                await self._stop_producer(producer, self.bounds.abort)
                raise
            except Exception as exc:
                await self._stop_producer(producer)
                log.warning("producer_start_failed", topic=part.tp.topic, partition=part.tp.partition,
                            error=type(exc).__name__, reason=str(exc)[:200], retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.backoff_max_s)
        if part.retired:  # revoked meanwhile (the cancel came too late)
            await self._stop_producer(producer)
            return
        part.producer = producer
        part.start_offset = committed
        log.debug("producer_ready", topic=part.tp.topic, partition=part.tp.partition, committed=committed)

    async def ready(self, part: Partition) -> AIOKafkaProducer:
        """The partition's producer, once it has fenced the previous owner (bounded wait)."""
        if part.fenced or part.retired:
            raise NotOwned(part.name)
        if part.producer is None:
            if part.starter is None or part.starter.done():
                # Re-created after a reset: only while the group still gives us the partition in
                # the generation we joined, or it would fence the rightful owner.
                if not self._still_assigned(part):
                    raise NotOwned(part.name)
                part.starter = asyncio.create_task(self._start(part), name=f"start-producer {part.name}")
            await bounded(asyncio.shield(part.starter), self.bounds.producer_start * 2, "producer start")
        if part.producer is None or part.fenced or part.retired:
            raise NotOwned(part.name)
        return part.producer

    async def reset_producer(self, part: Partition) -> None:
        """After a Kafka error that is not fencing (a broker restart, a timeout): the producer's
        transaction state is unknown, so start a new one (it fences the old one)."""
        producer, part.producer = part.producer, None
        if producer is not None:
            await self._stop_producer(producer)

    def _kafka_generation(self) -> int | None:
        coordinator = getattr(self.consumer, "_coordinator", None)
        generation = getattr(coordinator, "generation", None)
        return generation if isinstance(generation, int) else None

    def _still_assigned(self, part: Partition) -> bool:
        consumer = self._consumer()
        return part.tp in consumer.assignment() and self._kafka_generation() == part.kafka_generation

    # ------------------------------------------------------------------ fence
    def fence(self, part: Partition) -> None:
        """Another owner has our transactional id: stop using the partition until the group
        assigns it again. The producer is not re-created here (that would fence the rightful
        owner); a rejoin is requested so that the group tells us what we own now."""
        if part.fenced:
            return
        part.fenced = True
        consumer = self._consumer()
        with contextlib.suppress(Exception):
            if part.tp in consumer.assignment():
                consumer.pause(part.tp)
        coordinator = getattr(consumer, "_coordinator", None)
        if coordinator is not None and hasattr(coordinator, "request_rejoin"):
            coordinator.request_rejoin()
        log.warning("fenced", topic=part.tp.topic, partition=part.tp.partition, generation=part.generation)
        if self.on_fenced is not None:
            self.on_fenced(part)

    # ------------------------------------------------------------------ revoke
    async def revoke(self, revoked: list[TopicPartition]) -> None:
        """Cancel the work in flight of the revoked partitions and wait for it (bounded), so
        that none of it runs beside the next owner; stop their producers afterwards."""
        parts = [p for p in (self.partitions.pop(tp, None) for tp in revoked) if p is not None]
        tasks: list[asyncio.Task[None]] = []
        for part in parts:
            part.retired = True
            for task in (part.batch, part.starter):
                if task is not None and not task.done():
                    task.cancel()
                    tasks.append(task)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.bounds.revoke)
            if pending:
                log.error("revoke_cancel_slow", tasks=[t.get_name() for t in pending])
        for part in parts:
            self._retire(part)
        log.info("partitions_revoked", partitions=[p.name for p in parts])

    def _retire(self, part: Partition) -> None:
        part.retired = True
        task = asyncio.create_task(self._retire_later(part), name=f"retire {part.name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire_later(self, part: Partition) -> None:
        # The producer is stopped only once nothing can use it any more.
        for task in (part.batch, part.starter):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.shield(task), self.bounds.kafka_call * 4)
        producer, part.producer = part.producer, None
        if producer is not None:
            await self._stop_producer(producer)

    async def _stop_producer(self, producer: AIOKafkaProducer, seconds: float | None = None) -> None:
        try:
            await asyncio.wait_for(producer.stop(), seconds or self.bounds.producer_stop)
        except Exception as exc:  # a producer that cannot even stop is abandoned
            log.warning("producer_stop_failed", error=type(exc).__name__)

    # ------------------------------------------------------------------ shutdown
    async def close(self) -> None:
        parts = list(self.partitions.values())
        self.partitions.clear()
        for part in parts:
            self._retire(part)
        if self._retiring:
            await asyncio.wait(list(self._retiring), timeout=self.bounds.producer_stop)

    def _consumer(self) -> AIOKafkaConsumer:
        assert self.consumer is not None
        return self.consumer

