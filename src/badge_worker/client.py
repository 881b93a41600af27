"""Publish commands and collect their outcomes: what an upstream module and a downstream
subscriber do. Used by the demo, the benchmark and the end-to-end tests."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from badge_worker import constants as K
from badge_worker.adapters.kafka_io import client_options, ensure_topics, partitions_of, start_client
from badge_worker.settings import Settings

Coord = tuple[str, int, int]  # input topic, partition, offset


@dataclass(frozen=True)
class Outcome:
    input: Coord
    topic: str  # results or errors
    body: dict[str, Any]
    received_at: float
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def code(self) -> int:
        errors = self.body.get("errors") or []
        return int(errors[0]["code"]) if errors else 200


class Publisher:
    """An idempotent producer; `send` returns the input coordinates of each command."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = AIOKafkaProducer(**client_options(settings), enable_idempotence=True, acks="all",
                                         linger_ms=5)
        self.sent_at: dict[Coord, float] = {}

    async def __aenter__(self) -> Publisher:
        await start_client(self.producer, self.settings)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    def key_for(self, topic: str, body: Any) -> bytes | None:
        if not isinstance(body, dict):
            return None
        name = "badgeMetaId" if topic == self.settings.topic_claims else "customerId"
        value = body.get(name)
        return None if value is None else str(value).encode()

    async def send_many(self, topic: str, bodies: list[Any], *, raw: bool = False,
                        headers: list[tuple[str, bytes]] | None = None) -> list[Coord]:
        futures = []
        for body in bodies:
            value = body if raw else json.dumps(body).encode()
            futures.append((await self.producer.send(topic, value, key=self.key_for(topic, body), headers=headers),
                            time.time()))
        coords = []
        for fut, started in futures:
            meta = await fut
            coord = (topic, meta.partition, meta.offset)
            self.sent_at[coord] = started
            coords.append(coord)
        return coords

    async def send(self, topic: str, body: Any, *, raw: bool = False,
                   headers: list[tuple[str, bytes]] | None = None) -> Coord:
        return (await self.send_many(topic, [body], raw=raw, headers=headers))[0]


class Collector:
    """A read_committed subscriber of the results and errors topics, from their current end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.consumer = AIOKafkaConsumer(**client_options(settings), isolation_level="read_committed",
                                         enable_auto_commit=False, fetch_max_wait_ms=50)
        self.outcomes: list[Outcome] = []
        self._cursor = 0  # outcomes before this index were handed out by a wait_* call
        # (topic, partition, offset) of every record taken: one the client hands out again (a
        # refetch around a leader change) is the same outcome, not a second one
        self._taken: set[tuple[str, int, int]] = set()

    async def __aenter__(self) -> Collector:
        await ensure_topics(self.settings)
        tps = await partitions_of(self.settings, [self.settings.topic_results, self.settings.topic_errors])
        await self.consumer.start()
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end positions now, before anything is published
            await self.consumer.position(tp)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def poll(self, timeout_ms: int = 500) -> list[Outcome]:
        batch = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=5000)
        now = time.time()
        fresh = []
        for tp, records in batch.items():
            for rec in records:
                if (tp.topic, tp.partition, rec.offset) in self._taken:
                    continue
                self._taken.add((tp.topic, tp.partition, rec.offset))
                headers = {k: v.decode() for k, v in rec.headers or ()}
                coord = (headers.get(K.H_INPUT_TOPIC, ""), int(headers.get(K.H_INPUT_PARTITION, -1)),
                         int(headers.get(K.H_INPUT_OFFSET, -1)))
                fresh.append(Outcome(coord, tp.topic, json.loads(rec.value or b"null"), now, headers))
        self.outcomes += fresh
        return fresh

    async def wait_for(self, coords: list[Coord] | set[Coord], timeout: float = 60.0) -> dict[Coord, Outcome]:
        """First outcome of each coordinate; raises TimeoutError naming how many are missing."""
        wanted = set(coords)
        deadline = time.monotonic() + timeout
        seen: dict[Coord, Outcome] = {}
        checked = 0  # outcomes before this index are in `seen` already (one pass, not one per poll)
        while True:
            for o in self.outcomes[checked:]:
                if o.input in wanted and o.input not in seen:
                    seen[o.input] = o
            checked = len(self.outcomes)
            if len(seen) == len(wanted):
                self._cursor = len(self.outcomes)
                return seen
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(wanted) - len(seen)} of {len(wanted)} outcomes missing")
            await self.poll()

    async def wait_for_new(self, count: int, timeout: float = 60.0) -> list[Outcome]:
        """The next `count` outcomes after those already handed out."""
        deadline = time.monotonic() + timeout
        while len(self.outcomes) < self._cursor + count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self._cursor + count - len(self.outcomes)} of {count} new outcomes missing")
            await self.poll()
        fresh = self.outcomes[self._cursor : self._cursor + count]
        self._cursor += count
        return fresh

    def count_by_input(self) -> dict[Coord, int]:
        counts: dict[Coord, int] = {}
        for o in self.outcomes:
            counts[o.input] = counts.get(o.input, 0) + 1
        return counts
