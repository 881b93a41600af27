"""The fresh earns of a batch run staged (Processor._earn_staged): the same outcomes, events
and limits as one message at a time, on real Redis and MongoDB; the earns that leave the
common path (counters to rebuild, a store error) still end with the right outcome."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from badge_worker.adapters.mongo import Repositories
from badge_worker.adapters.redis_store import RedisStore
from badge_worker.adapters.request_cache import RequestCache
from badge_worker.domain import events
from badge_worker.domain.commands import Command, Stream, decode
from badge_worker.errors import InfrastructureUnavailable
from badge_worker.service import counters
from badge_worker.service.messages import InputRecord, Result
from badge_worker.service.processor import Processor
from badge_worker.settings import Settings
from tests.integration.helpers import ORG, live_badge, load

OTHER_ORG = ORG + 1
OTHER = "-other"  # badge ids are global: the other org's badges carry this suffix


def limits(daily: int) -> dict[str, Any]:
    return {"customerConstraints": [{"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 2}],
            "badgeConstraints": [
                {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "maxEarnLimit": daily},
                {"constraintType": "BADGE_ROLLING_WINDOW", "rollType": "DAYS", "rollValue": 7, "maxEarnLimit": 1000},
            ]}


class CountingProcessor(Processor):
    """A real Processor that counts the earns it ran staged and the messages it ran alone."""

    staged = alone = 0

    async def _earn_stages(self, items: Any, context: Any) -> list[Result]:
        self.staged += len(items)
        return await super()._earn_stages(items, context)

    async def _handle_with_retries(self, *args: Any, **kwargs: Any) -> Result:
        self.alone += 1
        return await super()._handle_with_retries(*args, **kwargs)


class FailingIntents(Repositories):
    """Real repositories whose batched intent insert has a bug (not an outage)."""

    async def insert_intents(self, items: Any) -> list[BaseException | None]:
        raise RuntimeError("a bug in the batched insert")


def record(s: Settings, org: int, offset: int, body: dict[str, Any]) -> InputRecord:
    return InputRecord(s.topic_earns, 0, offset, str(body["customerId"]).encode(),
                       json.dumps({"orgId": org, **body}).encode(), (), int(time.time() * 1000), Stream.EARNS)


def stream(s: Settings, org: int, suffix: str = "") -> list[InputRecord]:
    """40 customers: 1-3 earns each of the limited badge (a lifetime cap of 2 per customer),
    interleaved; earns of a badge without limits, and of one that does not exist."""
    bodies: list[dict[str, Any]] = []
    for k in range(3):
        for c in range(40):
            if k <= c % 3:
                bodies.append({"requestId": f"e{c}-{k}", "badgeMetaId": "sb" + suffix, "customerId": 500 + c})
        bodies.append({"requestId": f"f{k}", "badgeMetaId": "free" + suffix, "customerId": 900 + k})
        bodies.append({"requestId": f"n{k}", "badgeMetaId": "nope" + suffix, "customerId": 950 + k})
    return [record(s, org, n, b) for n, b in enumerate(bodies)]


def comparable(result: Result) -> tuple[Any, ...]:
    """What must agree between two runs: code, errors, data without ids, the customer's counts
    in the event (a badge-level count depends on the order the customers ran in: concurrent)."""
    public, event = events.split(result.outcome)
    data = {k: v for k, v in (public["data"] or {}).items() if k not in ("earnedBadgeId",)}
    counts = None if event is None else [c["currentEarnCount"] for c in event["data"]["earnConstraints"]
                                         if c["constraintLevel"] == "CUSTOMER"]
    return (result.code, json.dumps(public["errors"], sort_keys=True).replace(OTHER, ""),
            json.dumps(data, sort_keys=True).replace(OTHER, ""), counts)


async def one_at_a_time(processor: Processor, records: Sequence[InputRecord]) -> list[Result]:
    return [await processor.handle(r, decode(r.value, r.stream)) for r in records]


async def setup(mongo: Repositories) -> None:
    for org, suffix in ((ORG, ""), (OTHER_ORG, OTHER)):
        await load(mongo, live_badge("sb" + suffix, orgId=org, **limits(1000)),
                   live_badge("tight" + suffix, orgId=org, **limits(45)), live_badge("free" + suffix, orgId=org))


async def test_staged_earns_answer_as_one_at_a_time(settings: Settings, mongo: Repositories,
                                                    redis_client: Redis) -> None:
    s = settings
    await setup(mongo)
    store = RedisStore(redis_client, s.redis_key_prefix)
    processor = CountingProcessor(mongo, store, RequestCache(redis_client, s.redis_key_prefix), badge_cache_ttl=60)
    batched = stream(s, ORG)
    staged = await processor.process_batch(batched)
    assert processor.staged == 40 + 6  # the first earn of each customer; every other one after it
    assert processor.alone == 79 + 6 - 46  # none of the staged ones fell back to running alone
    alone = await one_at_a_time(processor, stream(s, OTHER_ORG, OTHER))
    assert [comparable(r) for r in staged] == [comparable(r) for r in alone]
    codes = [r.code for r in staged]
    # 40 first earns, 26 second ones, the 13 third ones refused; the badge without limits 3 times
    assert (codes.count(200), codes.count(830), len(codes)) == (40 + 26 + 3, 13, 79 + 6)
    assert [r.code for r in staged if r.outcome["requestId"].startswith("n")] == [staged[-1].code] * 3 != [200] * 3
    # every accepted earn is stored once, with the ObjectId its outcome names
    for org, results in ((ORG, staged), (OTHER_ORG, alone)):
        for r in results:
            if r.code == 200:
                doc = await mongo.find_earned_by_request(org, r.outcome["requestId"])
                assert doc is not None and str(doc["_id"]) == r.outcome["data"]["earnedBadgeId"]
    # and the same batch again (the worker was killed before its commit) answers the same
    again = await CountingProcessor(mongo, store, RequestCache(redis_client, s.redis_key_prefix),
                                    badge_cache_ttl=60).process_batch(batched)
    assert [comparable(r) for r in again] == [comparable(r) for r in staged]
    assert [r.outcome["data"] for r in again] == [r.outcome["data"] for r in staged]


async def test_staged_earns_rebuild_counters_redis_lost(settings: Settings, mongo: Repositories,
                                                        redis_client: Redis) -> None:
    """Redis loses the badge's counters between two batches: the staged reserves ask for a
    rebuild, and the earns decided after it count what MongoDB holds."""
    s = settings
    await setup(mongo)
    store = RedisStore(redis_client, s.redis_key_prefix)
    first = await Processor(mongo, store, RequestCache(redis_client, s.redis_key_prefix)).process_batch(
        [record(s, ORG, n, {"requestId": f"a{n}", "badgeMetaId": "tight", "customerId": 700 + n}) for n in range(40)])
    assert [r.code for r in first] == [200] * 40
    keys = [k async for k in redis_client.scan_iter(match=f"{s.redis_key_prefix}:*", count=1000)]
    await redis_client.delete(*keys)
    processor = CountingProcessor(mongo, RedisStore(redis_client, s.redis_key_prefix),
                                  RequestCache(redis_client, s.redis_key_prefix))
    second = await processor.process_batch(
        [record(s, ORG, 40 + n, {"requestId": f"b{n}", "badgeMetaId": "tight", "customerId": 800 + n})
         for n in range(10)])
    assert (processor.staged, processor.alone) == (10, 0)  # rebuilt and reserved again, still staged
    assert sorted(r.code for r in second) == [200] * 5 + [831] * 5  # the daily cap of 45: 40 + 5
    accepted = [r.outcome["requestId"] for r in second if r.code == 200]
    assert [(await mongo.find_earned_by_request(ORG, rid) or {}).get("requestId") for rid in accepted] == accepted
    # the counters are trusted again: the next refusals come from the staged pipeline itself
    third = await processor.process_batch(
        [record(s, ORG, 50 + n, {"requestId": f"c{n}", "badgeMetaId": "tight", "customerId": 850 + n})
         for n in range(3)])
    assert [r.code for r in third] == [831] * 3 and (processor.staged, processor.alone) == (13, 0)
    assert [await mongo.find_earned_by_request(ORG, f"c{n}") for n in range(3)] == [None] * 3
    assert await mongo.rejections.count_documents({"orgId": ORG}) == 5 + 3


async def test_a_failing_stage_leaves_each_earn_to_run_alone(settings: Settings, mongo: Repositories,
                                                             redis_client: Redis) -> None:
    s = settings
    await setup(mongo)
    broken = FailingIntents(mongo.db)
    processor = Processor(broken, RedisStore(redis_client, s.redis_key_prefix),
                          RequestCache(redis_client, s.redis_key_prefix))
    results = await processor.process_batch(
        [record(s, ORG, n, {"requestId": f"c{n}", "badgeMetaId": "sb", "customerId": 600 + n % 5})
         for n in range(15)])
    assert [r.code for r in results] == [200] * 10 + [830] * 5
    assert all(not r.to_dlq for r in results)
    for r in results[:10]:
        doc = await mongo.find_earned_by_request(ORG, r.outcome["requestId"])
        assert doc is not None and str(doc["_id"]) == r.outcome["data"]["earnedBadgeId"]


class OneOutage(Processor):
    """A real Processor where the earn with requestId `down` meets an outage when it runs
    alone, and the others run alone slowly; it records which of those finished."""

    down = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.finished: list[str] = []

    async def _handle_with_retries(self, record: InputRecord, item: Any, *args: Any, **kwargs: Any) -> Result:
        if item.requestId == self.down:
            await asyncio.sleep(0.05)
            raise InfrastructureUnavailable("MongoDB went away")
        await asyncio.sleep(0.4)
        result = await super()._handle_with_retries(record, item, *args, **kwargs)
        self.finished.append(item.requestId)
        return result


async def test_an_outage_of_one_earn_run_alone_stops_the_others(settings: Settings, mongo: Repositories,
                                                                redis_client: Redis) -> None:
    """Earns of a badge that reads its issues leave the staged path and run alone; an outage
    in one of them fails the batch (to be retried) and none of the others goes on beside
    the retry."""
    s = settings
    await load(mongo, live_badge("needs-issue", earnType="ISSUE_EARN"))
    processor = OneOutage(mongo, RedisStore(redis_client, s.redis_key_prefix),
                          RequestCache(redis_client, s.redis_key_prefix))
    processor.down = "i2"
    batch = [record(s, ORG, n, {"requestId": f"i{n}", "badgeMetaId": "needs-issue", "customerId": 300 + n})
             for n in range(6)]
    with pytest.raises(InfrastructureUnavailable):
        await processor.process_batch(batch)
    await asyncio.sleep(0.8)
    assert processor.finished == []


async def test_a_stage_bug_then_an_outage_stops_the_others(settings: Settings, mongo: Repositories,
                                                           redis_client: Redis) -> None:
    """The fallback after a bug in a stage (each earn alone) stops every earn on an outage too."""
    s = settings
    await setup(mongo)

    processor = OneOutage(FailingIntents(mongo.db), RedisStore(redis_client, s.redis_key_prefix),
                          RequestCache(redis_client, s.redis_key_prefix))
    processor.down = "c3"
    with pytest.raises(InfrastructureUnavailable):
        await processor.process_batch(
            [record(s, ORG, n, {"requestId": f"c{n}", "badgeMetaId": "sb", "customerId": 620 + n})
             for n in range(6)])
    await asyncio.sleep(0.8)
    assert processor.finished == []


class Forgetful(Processor):
    """A real Processor with a bug that loses one message's outcome."""

    async def _handle_with_retries(self, record: InputRecord, item: Any, *args: Any, **kwargs: Any) -> Result:
        result = await super()._handle_with_retries(record, item, *args, **kwargs)
        return None if record.offset == 2 else result  # type: ignore[return-value]


async def test_a_batch_missing_an_outcome_fails_instead_of_committing_a_hole(
        settings: Settings, mongo: Repositories, redis_client: Redis) -> None:
    s = settings
    await setup(mongo)
    processor = Forgetful(mongo, RedisStore(redis_client, s.redis_key_prefix),
                          RequestCache(redis_client, s.redis_key_prefix))
    # one customer: the first earn runs staged, the rest (offset 2 among them) after it
    with pytest.raises(RuntimeError, match=r"no outcome for offsets \[2\]"):
        await processor.process_batch(
            [record(s, ORG, n, {"requestId": f"h{n}", "badgeMetaId": "free", "customerId": 640}) for n in range(4)])


class WatchingRejections(Processor):
    """A real Processor that notes, when an earn's limits are taken alone (counters to
    rebuild), whether the staged pipeline's refusals are marked in MongoDB already."""

    marked_then: list[int] = []

    async def _reserve(self, cmd: Command, plan: Any) -> Any:
        self.marked_then.append(await self.repos.rejections.count_documents({"orgId": ORG, "requestId": "x2"}))
        return await super()._reserve(cmd, plan)


async def test_refusals_are_marked_before_a_rebuild_in_the_same_batch(settings: Settings, mongo: Repositories,
                                                                      redis_client: Redis) -> None:
    """A refused earn's intent counts as held until its rejection marker is written; a rebuild
    in the same batch must not see it pending."""
    s = settings
    await setup(mongo)
    store = RedisStore(redis_client, s.redis_key_prefix)
    requests = RequestCache(redis_client, s.redis_key_prefix)
    first = await Processor(mongo, store, requests).process_batch(
        [record(s, ORG, 0, {"requestId": "x0", "badgeMetaId": "sb", "customerId": 660}),
         record(s, ORG, 1, {"requestId": "x1", "badgeMetaId": "sb", "customerId": 660}),
         record(s, ORG, 2, {"requestId": "t0", "badgeMetaId": "tight", "customerId": 661})])
    assert [r.code for r in first] == [200] * 3
    lost = [k async for k in redis_client.scan_iter(match=f"{s.redis_key_prefix}:{{{ORG}:tight}}:*", count=1000)]
    assert lost
    await redis_client.delete(*lost)
    processor = WatchingRejections(mongo, store, requests)
    processor.marked_then = []
    second = await processor.process_batch(
        [record(s, ORG, 3, {"requestId": "x2", "badgeMetaId": "sb", "customerId": 660}),  # a third: refused
         record(s, ORG, 4, {"requestId": "t1", "badgeMetaId": "tight", "customerId": 662})])  # counters lost
    assert [r.code for r in second] == [830, 200]
    assert processor.marked_then == [1]


class RebuiltBeforeTheMarkers(Repositories):
    """Real repositories where, just before the first refusal's marker is written, Redis
    loses the badge's counters and another worker rebuilds them from MongoDB (a FLUSHALL, then
    any earn of that badge in another process): the rebuild reads the refused earn's intent
    as pending."""

    def __init__(self, mongo: Repositories, store: RedisStore, badge: str) -> None:
        super().__init__(mongo.db)
        self.store, self.badge, self.hook_fired, self.armed = store, badge, False, False

    async def _lose_and_rebuild(self) -> None:
        if self.armed and not self.hook_fired:
            self.hook_fired = True
            lost = [k async for k in self.store.client.scan_iter(match=f"{self.store.prefix}:{{{ORG}:{self.badge}}}:*")]
            await self.store.client.delete(*lost)
            await counters.rebuild_badge(self.store, self, ORG, self.badge)

    async def reject_intents(self, intents: Any) -> list[BaseException | None]:
        await self._lose_and_rebuild()
        return await super().reject_intents(intents)

    async def reject_intent(self, intent: Any) -> None:
        await self._lose_and_rebuild()
        await super().reject_intent(intent)


@pytest.mark.parametrize("staged", [True, False])
async def test_a_rebuild_between_a_refusal_and_its_marker_leaves_no_count_behind(
        settings: Settings, mongo: Repositories, redis_client: Redis, staged: bool) -> None:
    """One earn a day fits the badge (and one per customer): customer 671's earn is refused
    (831). Had the rebuild's provisional count of it stayed, Redis would hold one earn of 671
    that MongoDB does not (and 671's next earn would be refused 830 holding nothing)."""
    s = settings
    await load(mongo, live_badge("daily1", customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 1}], badgeConstraints=[
        {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "maxEarnLimit": 1}]))
    store = RedisStore(redis_client, s.redis_key_prefix)
    repos = RebuiltBeforeTheMarkers(mongo, store, "daily1")
    processor = Processor(repos, store, RequestCache(redis_client, s.redis_key_prefix))
    first = await processor.process_batch([record(s, ORG, 0, {"requestId": "d0", "badgeMetaId": "daily1",
                                                              "customerId": 670})])
    assert [r.code for r in first] == [200]
    repos.armed = True
    refused = record(s, ORG, 1, {"requestId": "d1", "badgeMetaId": "daily1", "customerId": 671})
    if staged:
        second = await processor.process_batch([refused])
    else:
        second = [await processor.handle(refused, decode(refused.value, refused.stream))]
    assert [r.code for r in second] == [831]
    assert repos.hook_fired
    assert await counters.check_badge(store, mongo, ORG, "daily1") == []
