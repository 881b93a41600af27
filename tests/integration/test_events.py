"""Notification events (CONTRACT.md section 7, docs/events.md) on the real servers: one per
successful earn/issue/revoke and none for anything else, committed with the outcome, the same
event (same eventId) on every redelivery, and exactly one each across SIGKILLs."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from redis.asyncio import Redis

from badge_worker import constants as K
from badge_worker.adapters import kafka_io
from badge_worker.adapters.mongo import Repositories
from badge_worker.adapters.redis_store import RedisStore
from badge_worker.adapters.request_cache import RequestCache
from badge_worker.client import Collector, Coord, Publisher
from badge_worker.domain.commands import Stream
from badge_worker.domain.events import EVENT_KEY, EventName, event_id, split
from badge_worker.domain.timeutil import iso, parse_instant
from badge_worker.service import messages
from badge_worker.service.commit import _send_all, commit_batch
from badge_worker.service.messages import InputRecord, Result
from badge_worker.service.ownership import Bounds
from badge_worker.service.processor import Processor
from badge_worker.settings import Settings
from tests.conftest import WorkerProcess
from tests.integration.helpers import ORG, live_badge, load, running_worker
from tests.integration.test_resilience import settle, wait_count

LOYALTY = {"ownerType": "Loyalty", "referenceId": "prog-1"}
NAMES = {"earn": EventName.EARNED, "issue": EventName.ISSUED, "revokeEarn": EventName.EARN_REVOKED,
         "revokeIssue": EventName.ISSUE_REVOKED}


class EventReader:
    """A subscriber of the events topic from its beginning (read_committed unless told)."""

    def __init__(self, settings: Settings, isolation_level: str = "read_committed") -> None:
        self.settings = settings
        self.consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                         isolation_level=isolation_level, enable_auto_commit=False,
                                         fetch_max_wait_ms=50)
        self.records: list[ConsumerRecord[bytes, bytes]] = []

    async def __aenter__(self) -> EventReader:
        await kafka_io.ensure_topics(self.settings)
        tps = await kafka_io.partitions_of(self.settings, [self.settings.topic_events])
        await self.consumer.start()
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(r.value or b"null") for r in self.records]

    async def poll(self, timeout_ms: int = 300) -> None:
        for records in (await self.consumer.getmany(timeout_ms=timeout_ms, max_records=5000)).values():
            self.records += records

    async def wait_count(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.records) < count:
            assert time.monotonic() < deadline, f"only {len(self.records)} of {count} events"
            await self.poll()

    async def settle(self, seconds: float = 2.0) -> None:
        """Keep reading for a while, so that an extra event would be seen."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await self.poll()


def by_request(events: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {e["requestId"]: e for e in events}
    assert len(found) == len(events), Counter(e["requestId"] for e in events).most_common(3)
    return found


def counts_of(event: dict[str, Any]) -> list[int]:
    return [c["currentEarnCount"] for c in event["data"]["earnConstraints"]]


# ---------------------------------------------------------------- (a) one event per success
async def test_one_event_per_successful_command_and_none_for_anything_else(
        topics: Settings, mongo: Repositories) -> None:
    s = topics
    await load(mongo,
               live_badge("ev-b", customerConstraints=[{"constraintType": "CUSTOMER_BADGE_FIXED_VALUE",
                                                        "maxEarnLimit": 3}],
                          badgeConstraints=[{"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS",
                                             "maxEarnLimit": 100},
                                            {"constraintType": "BADGE_ROLLING_WINDOW", "rollType": "DAYS",
                                             "rollValue": 2, "maxEarnLimit": 50}],
                          earnedBadgeExpiry={"expiryType": "RELATIVE", "relativeExpirytype": "DAYS", "value": 5}),
               live_badge("ev-i", earnType="ISSUE_EARN", issuedBadgeExpiry={"expiryType": "NEVER"}))

    def cmd(kind: str, rid: str, customer: int, badge: str = "ev-b", **extra: object) -> dict[str, object]:
        return {"orgId": ORG, "type": kind, "requestId": rid, "badgeMetaId": badge, "customerId": customer, **extra}

    async with running_worker(s), Collector(s) as collector, Publisher(s) as pub, EventReader(s) as reader:
        claim = await pub.send(s.topic_claims, {"orgId": ORG, "badgeMetaId": "ev-b", **LOYALTY})
        assert (await collector.wait_for([claim], 60))[claim].code == 200
        steps: list[tuple[dict[str, object], int]] = [
            (cmd("issue", "i1", 1, "ev-i"), 200),
            (cmd("earn", "e1", 1, triggeredBy=LOYALTY), 200),
            (cmd("earn", "e2", 1), 200),
            (cmd("earn", "e3", 2), 200),
            (cmd("earn", "e4", 1), 200),
            (cmd("earn", "e5", 1), 830),  # the customer's lifetime cap of 3
            (cmd("earn", "e6", 1, "nope"), 404),
            (cmd("earn", "e1", 3), 809),  # a new message reusing a requestId
            (cmd("issue", "i2", 1, "ev-i"), 1040),
        ]
        coords, seen = [], {}
        for body, _ in steps:  # one at a time: the counts depend on the order
            coords.append(await pub.send(s.topic_earns, body))
            seen.update(await collector.wait_for(coords[-1:], 60))
        first_earn = seen[coords[1]].body["data"]["earnedBadgeId"]
        later: list[tuple[dict[str, object], int]] = [
            (cmd("revokeEarn", "v1", 1, earnedBadgeId=first_earn), 200),
            (cmd("revokeEarn", "v2", 1, earnedBadgeId=first_earn), 814),
            (cmd("earn", "e7", 1), 200),  # the revoked earn gave its slot back
            (cmd("earn", "e8", 1, "ev-i"), 200),  # no limits
            (cmd("revokeIssue", "v3", 1, "ev-i"), 200),
            (cmd("revokeIssue", "v4", 1, "ev-i"), 404),
        ]
        for body, _ in later:
            coords.append(await pub.send(s.topic_earns, body))
            seen.update(await collector.wait_for(coords[-1:], 60))
        steps += later
        assert [seen[c].code for c in coords] == [code for _, code in steps]
        ok = {str(body["requestId"]): (body, seen[c]) for (body, code), c in zip(steps, coords, strict=True)
              if code == 200}
        await reader.wait_count(len(ok))
        await reader.settle()
        await collector.poll(500)

    assert all(EVENT_KEY not in o.body for o in collector.outcomes)  # the outcome is published as it was
    assert Counter(collector.count_by_input().values()) == Counter({1: len(coords) + 1})
    events = by_request(reader.events)
    assert set(events) == set(ok)  # none for the claim or for any rejection
    for rid, (body, outcome) in ok.items():
        event = events[rid]
        name = NAMES[str(body["type"])]
        assert event["eventName"] == name.value and event["eventId"] == event_id(ORG, rid, name)
        assert event["orgId"] == ORG and event["data"]["customerId"] == body["customerId"]
        assert event["data"]["badgeId"] == body["badgeMetaId"]
        assert abs(parse_instant(event["createdAt"]) - pub.sent_at[outcome.input]) < 5  # the message time
    records = {json.loads(r.value or b"{}")["requestId"]: r for r in reader.records}
    assert all(r.key == b"1" for rid, r in records.items() if rid != "e3") and records["e3"].key == b"2"
    e3 = seen[coords[3]]
    assert dict(records["e3"].headers)[K.H_INPUT_OFFSET] == str(e3.input[2]).encode()

    # currentEarnCount: (customer lifetime cap, badge daily window, badge 2-day rolling window)
    assert {rid: counts_of(events[rid]) for rid in ("e1", "e2", "e3", "e4", "e7", "e8")} == {
        "e1": [1, 1, 1], "e2": [2, 2, 2], "e3": [1, 3, 3], "e4": [3, 4, 4], "e7": [3, 4, 4], "e8": []}
    e1 = events["e1"]["data"]
    assert [(c["constraintLevel"], c["constraintType"], c["maxEarnLimit"]) for c in e1["earnConstraints"]] == [
        ("CUSTOMER", "CUSTOMER_BADGE_FIXED_VALUE", 3), ("BADGE", "BADGE_FIXED_WINDOW", 100),
        ("BADGE", "BADGE_ROLLING_WINDOW", 50)]
    lifetime, daily, rolling = e1["earnConstraints"]
    assert lifetime["windowStart"] is None and lifetime["windowEnd"] is None
    assert parse_instant(daily["windowEnd"]) - parse_instant(daily["windowStart"]) == 86_400
    assert rolling["windowEnd"] == e1["earnEventDate"]
    assert parse_instant(rolling["windowEnd"]) - parse_instant(rolling["windowStart"]) == 2 * 86_400
    e1_outcome = ok["e1"][1].body["data"]
    assert e1["earnId"] == first_earn and e1["triggeringActivity"] == LOYALTY
    assert e1["expiresOn"] == e1_outcome["expiresOn"] and e1["expiresOnISO"] == e1_outcome["expiresOnISO"]
    issue = events["i1"]["data"]
    assert issue["issualId"] == ok["i1"][1].body["data"]["issuedId"] and issue["triggeringActivity"] is None
    assert issue["expiresOn"] is None and parse_instant(issue["issuedOn"]) > 0
    assert events["e8"]["data"]["issuedId"] == issue["issualId"]
    assert events["v1"]["data"]["earnId"] == first_earn
    assert events["v1"]["data"]["revokedOn"] == events["v1"]["createdAt"]
    assert events["v3"]["data"]["issualIds"] == [issue["issualId"]] and events["v3"]["data"]["issualId"] == \
        issue["issualId"]
    stored = await mongo.find_earned_by_request(ORG, "e4")  # as the worker reads it back (JSON text stored)
    assert stored is not None and stored["earnConstraints"] == events["e4"]["data"]["earnConstraints"]


# ---------------------------------------------------------------- (b) redelivery
def record(s: Settings, offset: int, body: dict[str, Any]) -> InputRecord:
    return InputRecord(s.topic_earns, 0, offset, str(body["customerId"]).encode(),
                       json.dumps({"orgId": ORG, **body}).encode(), (), int(time.time() * 1000), Stream.EARNS)


async def publish_aborted(producer: Any, s: Settings, results: list[Result]) -> None:
    """A run that crashed after sending its outputs, before its commit: the next owner aborts it."""
    await producer.begin_transaction()
    deliveries = await _send_all(producer, s, results, lambda _: s.output_max_message_bytes)
    await asyncio.gather(*deliveries)
    await producer.abort_transaction()


def published(results: list[Result]) -> list[tuple[bytes | None, bytes | None]]:
    """The bytes each result's outcome and event go out as."""
    return [(kafka_io.encode(split(r.outcome)[0]), None if r.event is None else kafka_io.encode_event(r.event))
            for r in results]


async def stored_like_the_worker(repos: Repositories, cache: RequestCache, results: list[Result]) -> None:
    decided = messages.decided(results)
    await repos.ledger_store_outcomes(messages.outcome_documents(decided))
    await cache.remember((r.outcome["orgId"], r.outcome["requestId"], r.outcome) for r in decided)


async def test_a_redelivered_command_publishes_the_same_event_and_only_one_is_committed(
        topics: Settings, mongo: Repositories, redis_client: Redis) -> None:
    s = topics
    await load(mongo, live_badge("rd-b", customerConstraints=[{"constraintType": "CUSTOMER_BADGE_FIXED_VALUE",
                                                               "maxEarnLimit": 2}]),
               live_badge("rd-i", earnType="ISSUE_EARN", issuedBadgeExpiry={"expiryType": "NEVER"}))
    cache = RequestCache(redis_client, s.redis_key_prefix)
    processor = Processor(mongo, RedisStore(redis_client, s.redis_key_prefix), cache, badge_cache_ttl=60)
    bodies: list[dict[str, Any]] = []
    for c in range(20):
        bodies += [{"type": "issue", "requestId": f"i{c}", "badgeMetaId": "rd-i", "customerId": 100 + c},
                   *({"requestId": f"e{c}-{k}", "badgeMetaId": "rd-b", "customerId": 100 + c} for k in range(3))]
    cached = [record(s, n, b) for n, b in enumerate(bodies)]  # each ends with one 830
    # a second batch, decided but never stored (the worker was killed after the effects)
    resumed = [record(s, len(cached) + n, {"requestId": f"r{c}", "badgeMetaId": "rd-b", "customerId": 200 + c})
               for n, c in enumerate(range(10))]
    producer = kafka_io.make_transactional_producer(s, f"{s.consumer_group}.events-test")
    await producer.start()
    try:
        first = await processor.process_batch(cached)
        await stored_like_the_worker(mongo, cache, first)
        await publish_aborted(producer, s, first)
        from_cache = await processor.process_batch(cached)
        assert all(r.replayed for r in from_cache)
        await publish_aborted(producer, s, from_cache)
        keys = [k async for k in redis_client.scan_iter(match=f"{s.redis_key_prefix}:*", count=1000)]
        await redis_client.delete(*keys)  # Redis lost everything: the outcomes come from MongoDB
        from_mongodb = await processor.process_batch(cached)
        # stored outcomes are sent again; a successful earn's is built again from its earned badge
        assert [r.replayed for r in from_mongodb] == [r.code != 200 or r.outcome["type"] != "earn" for r in first]
        assert published(from_mongodb) == published(first)  # byte for byte, event included

        before_crash = await processor.process_batch(resumed)
        # half of them as if killed between taking the limits and storing the earned badge
        for r in before_crash[:5]:
            await mongo.earned.delete_one({"requestId": r.outcome["requestId"]})
        await publish_aborted(producer, s, before_crash)
        after_crash = await processor.process_batch(resumed)
        assert not any(r.replayed for r in after_crash)
        await commit_batch(producer, s, TopicPartition(s.topic_earns, 0), [*cached, *resumed],
                           [*from_mongodb, *after_crash], Bounds())
    finally:
        await producer.stop()

    for runs in ((first, from_cache, from_mongodb), (before_crash, after_crash)):
        assert [r.event for r in runs[0]] == [r.event for r in runs[-1]]  # identical, eventId and all
    assert Counter(r.code for r in first) == Counter({200: 60, 830: 20})
    assert all((r.event is None) == (r.code != 200) for r in [*first, *before_crash])
    ok = {r.outcome["requestId"] for r in [*first, *before_crash] if r.code == 200}
    async with EventReader(s) as committed, EventReader(s, "read_uncommitted") as everything:
        await committed.wait_count(len(ok))
        await everything.wait_count(3 * 60 + 2 * 10)  # the aborted copies are there too
        await committed.settle(1.5)
        await everything.settle(0.5)
    assert set(by_request(committed.events)) == ok  # exactly one committed event each
    copies: dict[str, list[dict[str, Any]]] = {}
    for event in everything.events:
        copies.setdefault(event["eventId"], []).append(event)
    assert len(copies) == len(ok) and {len(c) for c in copies.values()} == {2, 3}
    assert all(c == c[:1] * len(c) for c in copies.values())  # the same event every time
    assert sorted(counts_of(e) for e in committed.events if e["eventName"] == "badgeEarned") == \
        sorted([[1], [2]] * 20 + [[1]] * 10)


# ---------------------------------------------------------------- (c) SIGKILL
@pytest.mark.slow
async def test_sigkill_mid_stream_gives_exactly_one_event_per_successful_outcome(
        topics: Settings, mongo: Repositories, worker_processes: list[WorkerProcess], tmp_path: Path) -> None:
    # small batches: a restarted worker drains the backlog in many transactions, so the second
    # kill lands mid-stream however fast the machine (with 2,000 a fast one drained it all at once)
    s = topics.model_copy(update={"batch_max_records": 50})
    customers = 500  # per customer: an issue, and three earns of a badge it may earn twice
    await load(mongo, live_badge("kill-b", customerConstraints=[{"constraintType": "CUSTOMER_BADGE_FIXED_VALUE",
                                                                 "maxEarnLimit": 2}]),
               live_badge("kill-i", earnType="ISSUE_EARN", issuedBadgeExpiry={"expiryType": "NEVER"}))
    bodies: list[dict[str, object]] = []
    for k in range(4):
        for c in range(customers):
            body: dict[str, object] = {"orgId": ORG, "requestId": f"k{k}-{c}", "customerId": 30_000 + c}
            bodies.append({**body, "type": "issue", "badgeMetaId": "kill-i"} if k == 0
                          else {**body, "badgeMetaId": "kill-b"})
    log = tmp_path / "workers.log"
    async with Collector(s) as collector, Publisher(s) as pub, EventReader(s) as reader:
        worker_processes.append(WorkerProcess(s, log).start())
        publishing = asyncio.create_task(pub.send_many(s.topic_earns, bodies))
        kills = []
        for threshold in (300, 1000):
            await wait_count(collector, threshold, 120)
            worker_processes[-1].kill()
            kills.append(len(collector.outcomes))
            worker_processes.append(WorkerProcess(s, log).start())
        coords: list[Coord] = await publishing
        seen = await collector.wait_for(coords, 120)
        await settle(collector, 2)
        ok = {seen[c].body["requestId"] for c in coords if seen[c].code == 200}
        await reader.wait_count(len(ok), 60)
        await reader.settle(2)
    assert all(k < len(bodies) for k in kills), f"killed after the stream: {kills}"
    assert Counter(collector.count_by_input()[c] for c in coords) == Counter({1: len(bodies)})
    assert Counter(seen[c].code for c in coords) == Counter({200: 3 * customers, 830: customers})
    events = reader.events
    assert len({e["eventId"] for e in events}) == len(events)  # no duplicates
    assert set(by_request(events)) == ok
    per_customer: dict[int, list[int]] = {}
    for event in events:
        if event["eventName"] == "badgeEarned":
            per_customer.setdefault(event["data"]["customerId"], []).extend(counts_of(event))
    assert {c: sorted(n) for c, n in per_customer.items()} == {30_000 + c: [1, 2] for c in range(customers)}
    assert all(e["createdAt"] == iso(parse_instant(e["createdAt"])) for e in events)
