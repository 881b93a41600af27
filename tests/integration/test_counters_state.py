"""Counter state over time (docs/counters.md, "Counter state: lifetimes and repair"):
bounded memory, expiring windows and reservations, chunked rebuilds, partial Redis loss,
back-dated earns past the retention horizon, late revokes, shared counters, and the
`badge-worker counters check|rebuild` commands. Real Redis and MongoDB/FerretDB."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from badge_worker.adapters.mongo import Repositories
from badge_worker.adapters.redis_store import CounterRef, HeldEarn, NeedsRebuild, RedisStore, ReserveResult
from badge_worker.domain.commands import Stream
from badge_worker.domain.models import BadgeDefinition, ConstraintType
from badge_worker.domain.windows import CheckKind, LimitCheck, Scope, limit_checks
from badge_worker.service import counters
from badge_worker.service.messages import InputRecord, Result
from badge_worker.service.processor import Processor
from badge_worker.settings import Settings
from tests.conftest import settings_env
from tests.integration.test_resilience import free_port, start_redis

ORG = 7
DAY = 86_400.0


def badge_def(badge_id: str, start_on: float, **constraints: Any) -> BadgeDefinition:
    return BadgeDefinition.model_validate({
        "id": badge_id, "orgId": ORG, "startOn": start_on, "expiresOn": time.time() + 365 * DAY,
        "earnType": "EARN", "active": True, **constraints})


class Feed:
    """Commands into a Processor, as the worker hands them over (one partition batch)."""

    def __init__(self, processor: Processor) -> None:
        self.processor, self.offset = processor, 0

    async def run(self, *bodies: dict[str, Any]) -> list[Result]:
        records = []
        for body in bodies:
            self.offset += 1
            records.append(InputRecord("t.earns", 0, self.offset, None, json.dumps({"orgId": ORG, **body}).encode(),
                                       (), int(time.time() * 1000), Stream.EARNS))
        return await self.processor.process_batch(records)

    async def earns(self, badge: str, customers: list[int], tag: str, **extra: Any) -> list[int]:
        results = await self.run(*({"requestId": f"{tag}-{c}", "badgeMetaId": badge, "customerId": c, **extra}
                                   for c in customers))
        return [r.code for r in results]


def as_text(value: bytes | str | None) -> str:
    assert value is not None
    return value.decode() if isinstance(value, bytes) else value


def as_int(value: bytes | str | None) -> int:
    return int(as_text(value))


async def redis_keys(client: Redis, prefix: str) -> list[bytes]:
    return [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]


async def memory_of(client: Redis, keys: list[bytes]) -> int:
    total = 0
    for i in range(0, len(keys), 1000):
        async with client.pipeline(transaction=False) as pipe:
            for key in keys[i:i + 1000]:
                pipe.memory_usage(key, samples=0)
            total += sum(int(v or 0) for v in await pipe.execute())
    return total


# ---------------------------------------------------------------- memory over 60 simulated days
class Model:
    """The domain rule over every earn so far (no expiry): what reserve.lua must answer."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.events: dict[str, list[float]] = {}
        self.fixed_ends: dict[str, float] = {}  # every fixed-window counter ever taken -> window end
        self.rolling: dict[str, tuple[float, float]] = {}  # rolling counter -> (last event, roll)

    def decide(self, checks: list[LimitCheck], t: float) -> int | None:
        for i, c in enumerate(checks):
            if c.kind is CheckKind.ROLLING:
                events = self.events.get(c.counter, [])
                count = len(events) - bisect.bisect_right(events, c.window_start or float("-inf"))
            else:
                count = self.counts.get(c.counter, 0)
            if count >= c.limit:
                return i
        return None

    def take(self, checks: list[LimitCheck], t: float) -> None:
        for c in {c.counter: c for c in checks}.values():
            if c.kind is CheckKind.ROLLING:
                self.events.setdefault(c.counter, []).append(t)
                self.rolling[c.counter] = (t, CounterRef.of(c).roll or 0.0)
            else:
                self.counts[c.counter] = self.counts.get(c.counter, 0) + 1
                if c.window_end is not None:
                    self.fixed_ends[c.counter] = c.window_end


async def test_state_stays_bounded_over_60_simulated_days(redis_client: Redis, settings: Settings,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """103,700 earns of 2,000 customers over 61 simulated days, through reserve.lua (pipelined,
    in time order, the counters' clock driven by the simulated time). Every answer agrees with
    the domain rule applied to the whole history; at the end Redis holds what the live windows
    need, not the history."""
    retention, reservation_ttl = DAY, 3600.0
    store = RedisStore(redis_client, prefix=settings.redis_key_prefix, retention=retention,
                       reservation_ttl=reservation_ttl, max_ahead=100 * DAY)
    start = (int(time.time() // DAY) + 1) * DAY  # next UTC midnight: the simulation runs ahead of Redis's clock
    badge = badge_def("mem", start - DAY, customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_WINDOW", "durationType": "DAYS", "maxEarnLimit": 2},
        {"constraintType": "CUSTOMER_BADGE_ROLLING_WINDOW", "maxEarnForWeeks": 6, "rollForWeeks": 1},
        {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 40},
    ], badgeConstraints=[{"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "maxEarnLimit": 1500}])
    assert await store.rebuild(ORG, "mem", [], now=start)
    rnd = random.Random(20261122)
    days, per_day, customers = 61, 1700, 2000
    earns = sorted((start + d * DAY + rnd.random() * DAY, rnd.randrange(customers))
                   for d in range(days) for _ in range(per_day))
    model = Model()
    accepted: list[float] = []
    codes = {"OK": 0, "FULL": 0}
    began = time.monotonic()

    def prepare(first: int) -> list[tuple[float, int, list[LimitCheck]]]:
        return [(t, c, limit_checks(badge, 10_000 + c, t)) for t, c in earns[first:first + 500]]

    async def send(first: int, batch: list[tuple[float, int, list[LimitCheck]]]) -> list[Any]:
        return await store.reserve_many([(ORG, "mem", f"e{first + j}", t, checks, t)
                                         for j, (t, _, checks) in enumerate(batch)])

    batch = prepare(0)
    for first in range(0, len(earns), 500):
        # one pipeline at a time, in time order; the next batch is prepared while Redis runs this one
        sending = asyncio.create_task(send(first, batch))
        for _ in range(20):
            await asyncio.sleep(0)
        following = prepare(first + 500)
        results = await sending
        for (t, _, checks), result in zip(batch, results, strict=True):
            assert isinstance(result, ReserveResult), result
            full = model.decide(checks, t)
            assert result.status == ("OK" if full is None else "FULL"), (t, result, full)
            codes[result.status] += 1
            if full is None:
                model.take(checks, t)
                accepted.append(t)
            else:
                assert result.index == full
        batch = following
    elapsed = time.monotonic() - began
    clock = earns[-1][0]
    before = len(await redis_keys(redis_client, settings.redis_key_prefix))
    await store.collect(ORG, "mem")  # what the last pipeline's collection found due is deleted by the next one

    keys = await redis_keys(redis_client, settings.redis_key_prefix)
    memory = await memory_of(redis_client, keys)
    live_fixed = sum(1 for end in model.fixed_ends.values() if end + retention > clock)
    live_rolling = sum(1 for last, roll in model.rolling.values() if last + roll + retention > clock)
    live_reservations = sum(1 for t in accepted if t + reservation_ttl > clock)
    live = 3 + live_fixed + live_rolling + live_reservations  # + state hash, lifetime hash, expiry index
    no_expiry = 3 + len(model.fixed_ends) + len(model.rolling) + len(accepted)
    with capsys.disabled():
        print(f"\n[counters] {len(earns):,} earns over {days} simulated days in {elapsed:.1f} s: "
              f"{codes['OK']:,} accepted, {codes['FULL']:,} refused")
        print(f"[counters] Redis at the end: {len(keys):,} keys, {memory:,} bytes "
              f"({memory / 1024 / 1024:.2f} MiB, sum of MEMORY USAGE); the live windows need {live:,} keys "
              f"({live_fixed:,} fixed-window counters, {live_rolling:,} rolling sets, {live_reservations:,} "
              f"reservations, 3 per badge); with no expiry there would be {no_expiry:,} keys")
    assert len(earns) >= 100_000 and codes["FULL"] > 1000 and codes["OK"] > 50_000
    assert live <= len(keys) <= live + 2 * store.gc_batch  # what is live, and at most a collection batch more
    print(f"[counters] before the last collection: {before:,} keys")
    assert before <= live + 2 * 500 + 2 * store.gc_batch  # at most one pipeline (500 earns) of collection behind
    assert len(keys) * 10 < no_expiry
    assert memory < 3 * 1024 * 1024
    assert await redis_client.hlen(store.lifetime_key(ORG, "mem")) == len({c for _, c in earns})


# ---------------------------------------------------------------- keys expire
async def test_every_window_key_and_reservation_has_an_expiry(store: RedisStore, redis_client: Redis) -> None:
    now = time.time()
    badge = badge_def("ttl", now - 30 * DAY, customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_WINDOW", "durationType": "DAYS", "maxEarnLimit": 5},
        {"constraintType": "CUSTOMER_BADGE_ROLLING_WINDOW", "maxEarnForDays": 5, "rollForDays": 3},
        {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 5}])
    assert await store.rebuild(ORG, "ttl", [])
    checks = limit_checks(badge, 1, now)
    assert (await store.reserve(ORG, "ttl", "r1", now, checks)).status == "OK"
    fixed, rolling = (store.counter_key(ORG, "ttl", c.counter) for c in checks[:2])
    assert checks[0].window_end is not None
    ttl = await redis_client.ttl(fixed)
    assert abs(ttl - (checks[0].window_end + store.retention - now)) < 5  # the window's end + retention
    assert abs(await redis_client.ttl(rolling) - (3 * DAY + store.retention)) < 5
    assert abs(await redis_client.ttl(store.reservation_key(ORG, "ttl", "r1")) - store.reservation_ttl) < 5
    assert 0 < await redis_client.ttl(store.lifetime_key(ORG, "ttl")) <= store.idle_ttl  # with the badge's state
    assert 0 < await redis_client.ttl(store.ready_key(ORG, "ttl")) <= store.idle_ttl
    persistent = [k for k in await redis_keys(redis_client, store.prefix) if await redis_client.ttl(k) < 0]
    assert persistent == []


async def test_rolling_sets_are_trimmed_on_every_reserve(redis_client: Redis, settings: Settings) -> None:
    store = RedisStore(redis_client, prefix=settings.redis_key_prefix, retention=DAY, max_ahead=400 * DAY)
    t0 = (int(time.time() // DAY) + 1) * DAY
    badge = badge_def("trim", t0 - DAY, badgeConstraints=[
        {"constraintType": "BADGE_ROLLING_WINDOW", "rollType": "DAYS", "rollValue": 2, "maxEarnLimit": 1000}])
    assert await store.rebuild(ORG, "trim", [], now=t0)
    key = store.counter_key(ORG, "trim", limit_checks(badge, 1, t0)[0].counter)
    for n in range(200):  # one earn every 6 hours for 50 days
        t = t0 + n * DAY / 4
        assert (await store.reserve(ORG, "trim", f"r{n}", t, limit_checks(badge, n, t), now=t)).status == "OK"
        # only events inside (clock - retention - 2 days, clock] are kept: at most 12 of them
        assert await redis_client.zcard(key) <= 12
    assert await redis_client.zcard(key) == 12


# ---------------------------------------------------------------- shared counters
async def test_a_counter_named_by_two_checks_is_taken_once(store: RedisStore, redis_client: Redis) -> None:
    now = time.time()
    shared = [LimitCheck(Scope.BADGE, ConstraintType.BADGE_FIXED_VALUE, "same", limit, CheckKind.COUNTER, "b:same:life")
              for limit in (5, 3)]
    window = LimitCheck(Scope.BADGE, ConstraintType.BADGE_FIXED_WINDOW, "w", 10, CheckKind.COUNTER, "b:w:w:1",
                        now - 60, now + DAY)
    checks = [shared[0], window, shared[1], window]
    assert await store.rebuild(ORG, "sh", [])
    for n in range(3):
        assert (await store.reserve(ORG, "sh", f"r{n}", now, checks)).status == "OK"
    full = await store.reserve(ORG, "sh", "r3", now, checks)
    assert (full.status, full.index, full.count) == ("FULL", 2, 3)  # the smaller limit decides
    assert as_int(await redis_client.hget(store.lifetime_key(ORG, "sh"), "b:same:life")) == 3  # not 6
    assert as_int(await redis_client.get(store.counter_key(ORG, "sh", "b:w:w:1"))) == 3
    taken = json.loads(as_text(await redis_client.hget(store.reservation_key(ORG, "sh", "r0"), "keys")))
    assert sorted(item[0] for item in taken) == ["c", "l"]  # each counter recorded once
    assert await store.release(ORG, "sh", "r0") == "RELEASED"
    assert as_int(await redis_client.hget(store.lifetime_key(ORG, "sh"), "b:same:life")) == 2
    # a rebuild from stored limits that name a counter twice counts it once too
    refs = [CounterRef.of(c) for c in checks]
    held = [HeldEarn(f"h{n}", now, refs, confirmed=True) for n in range(2)]
    assert await store.rebuild(ORG, "sh", held, force=True)
    assert as_int(await redis_client.hget(store.lifetime_key(ORG, "sh"), "b:same:life")) == 2
    assert as_int(await redis_client.get(store.counter_key(ORG, "sh", "b:w:w:1"))) == 2


# ---------------------------------------------------------------- chunked rebuild
async def test_a_rebuild_loads_in_bounded_chunks_while_reservers_wait(store: RedisStore, redis_client: Redis) -> None:
    now = time.time()
    badge = badge_def("big", now - 30 * DAY - 3600, customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 3},
        {"constraintType": "CUSTOMER_BADGE_ROLLING_WINDOW", "maxEarnForDays": 3, "rollForDays": 7}],
        badgeConstraints=[{"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "maxEarnLimit": 10**6}])
    held = []
    for n in range(3000):  # 3,000 customers: 3,000 lifetime counts, 3,000 rolling sets, one daily window
        t = now - (n % 100) * 0.01
        held.append(HeldEarn(f"h{n}", t, [CounterRef.of(c) for c in limit_checks(badge, n, t)], confirmed=True))
    token = "t-" + str(now)
    start = await store.rebuild_begin(ORG, "big", token)
    assert start.status == "GO"
    with pytest.raises(NeedsRebuild):  # no state hash until the rebuild is published: reservers wait
        await store.reserve(ORG, "big", "x", now, limit_checks(badge, 1, now))
    assert (await store.rebuild_begin(ORG, "big", "another")).status == "BUSY"
    result = await store.rebuild_apply(ORG, "big", token, held, start=start,
                                       generation=store.next_generation(ORG, "big", start))
    assert result.chunks >= 12 and result.largest_chunk <= 500 == store.chunk
    assert await redis_client.hlen(store.lifetime_key(ORG, "big")) == 3000
    daily = store.counter_key(ORG, "big", limit_checks(badge, 1, now)[2].counter)
    assert as_int(await redis_client.get(daily)) == 3000
    assert (await store.reserve(ORG, "big", "x", now, limit_checks(badge, 1, now))).status == "OK"
    # a forced rebuild first clears the old keys (in batches too), then loads again
    again = await store.rebuild(ORG, "big", held[:10], force=True)
    assert again.applied and again.generation == result.generation + 1
    assert await redis_client.hlen(store.lifetime_key(ORG, "big")) == 10
    assert as_int(await redis_client.get(daily)) == 10


# ---------------------------------------------------------------- through the processor
@contextlib.asynccontextmanager
async def processor_on(mongo: Repositories, client: Redis, prefix: str, **store_options: Any
                       ) -> AsyncIterator[tuple[Processor, RedisStore, Feed]]:
    store = RedisStore(client, prefix=prefix, **store_options)
    processor = Processor(mongo, store, badge_cache_ttl=0.1, concurrency=64)
    yield processor, store, Feed(processor)


async def dump_prefix(client: Redis, prefix: str) -> list[tuple[bytes, bytes, int]]:
    out = []
    for key in await redis_keys(client, prefix):
        value = await client.dump(key)
        if value is not None:
            out.append((key, value, max(0, await client.pttl(key))))
    return out


async def restore_prefix(client: Redis, prefix: str, dumped: list[tuple[bytes, bytes, int]]) -> None:
    """Put back an earlier copy of our keys: Redis as after a failover to a lagging replica."""
    keys = await redis_keys(client, prefix)
    if keys:
        await client.delete(*keys)
    for key, value, ttl in dumped:
        await client.restore(key, ttl, value, replace=True)


async def test_redis_going_back_in_time_is_detected_and_rebuilt(
        mongo: Repositories, redis_client: Redis, settings: Settings) -> None:
    """The same server, an older copy of the badge's keys (its state hash included): the
    process that saw later seqs detects it (its floor), and so does a process that starts
    afterwards (the MongoDB watermark). Without that, the lost counts would let limits be
    exceeded (35 of 30, 25 of 20)."""
    prefix = settings.redis_key_prefix
    await mongo.upsert_badge(badge_def("back", time.time() - 10 * DAY, badgeConstraints=[
        {"constraintType": "BADGE_FIXED_VALUE", "maxEarnLimit": 30}]))
    async with processor_on(mongo, redis_client, prefix) as (_, store, feed):
        assert await feed.earns("back", list(range(10)), "a") == [200] * 10
        old = await dump_prefix(redis_client, prefix)
        assert await feed.earns("back", list(range(10, 20)), "b") == [200] * 10
        floor = store.memory(ORG, "back").floor
        await restore_prefix(redis_client, prefix, old)  # Redis says 10 earns; MongoDB has 20
        codes = await feed.earns("back", list(range(20, 35)), "c")
        assert codes.count(200) == 10 and codes.count(831) == 5, codes
        assert store.memory(ORG, "back").floor > floor  # a new generation
    assert await mongo.earned.count_documents({"badgeMetaId": "back", "status": "ACTIVE"}) == 30

    await mongo.upsert_badge(badge_def("back2", time.time() - 10 * DAY, badgeConstraints=[
        {"constraintType": "BADGE_FIXED_VALUE", "maxEarnLimit": 20}]))
    async with processor_on(mongo, redis_client, prefix, mark_interval=0.0) as (_, store, feed):
        assert await feed.earns("back2", list(range(10)), "p") == [200] * 10
        old = await dump_prefix(redis_client, prefix)
        assert await feed.earns("back2", list(range(10, 20)), "q") == [200] * 10
        watermark = await mongo.counter_mark(ORG, "back2")
        assert watermark == store.memory(ORG, "back2").floor
    await restore_prefix(redis_client, prefix, old)
    async with processor_on(mongo, redis_client, prefix) as (_, store, feed):  # a process started now
        assert store.memory(ORG, "back2").floor == 0
        assert await feed.earns("back2", list(range(20, 25)), "r") == [831] * 5
        assert store.memory(ORG, "back2").floor > watermark
    assert await mongo.earned.count_documents({"badgeMetaId": "back2", "status": "ACTIVE"}) == 20


async def test_a_restarted_redis_with_old_data_is_rebuilt(mongo: Repositories, settings: Settings,
                                                          tmp_path: Path) -> None:
    """A private Redis: SAVE after 5 earns, 5 more, then a restart that loads the old file
    (AOF everysec or a restored backup losing the last writes). A new process finds the
    state hash of another Redis run: rebuilt from MongoDB before anything is decided."""
    port = free_port()
    proc = start_redis(port, tmp_path)
    client = Redis(port=port)
    try:
        await mongo.upsert_badge(badge_def("rst", time.time() - 10 * DAY, badgeConstraints=[
            {"constraintType": "BADGE_FIXED_VALUE", "maxEarnLimit": 12}]))
        async with processor_on(mongo, client, "p", mark_interval=10**9) as (_, _, feed):
            assert await feed.earns("rst", list(range(5)), "a") == [200] * 5
            await client.save()
            assert await feed.earns("rst", list(range(5, 10)), "b") == [200] * 5
        with contextlib.suppress(Exception):
            await client.shutdown(nosave=True)
        proc.wait(20)
        await client.aclose()
        proc = start_redis(port, tmp_path)
        client = Redis(port=port)
        assert await client.exists("p:{7:rst}:meta")  # the old state hash is back, with 5 earns
        async with processor_on(mongo, client, "p", mark_interval=10**9) as (_, _, feed):
            codes = await feed.earns("rst", list(range(10, 20)), "c")
        assert codes.count(200) == 2 and codes.count(831) == 8, codes  # 12 in all, not 17
    finally:
        await client.aclose()
        proc.terminate()
        proc.wait(20)


async def test_back_dated_earns_past_the_horizon_are_decided_from_mongodb(
        mongo: Repositories, redis_client: Redis, settings: Settings) -> None:
    """Retention 1 day: windows of 20 days ago are not in Redis. Their counts come from
    MongoDB (never a silent 0), also when two processes race for them, and a back-dated
    earn still enters the live rolling window that contains it."""
    now = time.time()
    await mongo.upsert_badge(badge_def("old", now - 60 * DAY, customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_WINDOW", "durationType": "DAYS", "maxEarnLimit": 2,
         "startDate": now - 60 * DAY},
        {"constraintType": "CUSTOMER_BADGE_ROLLING_WINDOW", "maxEarnForDays": 3, "rollForDays": 30}],
        badgeConstraints=[{"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "maxEarnLimit": 4,
                           "startDate": now - 60 * DAY}]))
    prefix = settings.redis_key_prefix
    old_day = now - 20 * DAY
    async with processor_on(mongo, redis_client, prefix, retention=DAY) as (_, store_a, feed_a), \
            processor_on(mongo, redis_client, prefix, retention=DAY) as (_, _, feed_b):
        # one customer, three earns on a day 20 days ago: the third is over the daily limit
        codes = await feed_a.earns("old", [1], "x1", earnEventDate=old_day)
        codes += await feed_a.earns("old", [1], "x2", earnEventDate=old_day + 60)
        result = (await feed_a.run({"requestId": "x3-1", "badgeMetaId": "old", "customerId": 1,
                                    "earnEventDate": old_day + 120}))[0]
        assert codes == [200, 200] and result.code == 830
        detail = result.outcome["errors"][0]["detail"]
        assert (detail["constraintType"], detail["count"], detail["maxEarnLimit"]) == \
            ("CUSTOMER_BADGE_FIXED_WINDOW", 2, 2)
        assert detail["windowEnd"] + store_a.retention < time.time()  # a window Redis does not keep
        # two processes race for a badge-level window of 19 days ago (limit 4)
        day19 = now - 19 * DAY
        got = await asyncio.gather(feed_a.earns("old", list(range(100, 110)), "r", earnEventDate=day19),
                                   feed_b.earns("old", list(range(110, 120)), "s", earnEventDate=day19))
        assert sum(c.count(200) for c in got) == 4 and sum(c.count(831) for c in got) == 16
        # a historical import into one old day: one MongoDB read serves the whole batch (the
        # process's own commits keep it up to date)
        reads = 0
        read_earns = mongo.held_earns

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal reads
            reads += 1
            return await read_earns(*args, **kwargs)

        mongo.held_earns = counted  # type: ignore[method-assign]
        store_a.memory(ORG, "old").cold_cache = None  # as in a process that starts now
        codes = await feed_a.earns("old", list(range(200, 230)), "imp", earnEventDate=now - 30 * DAY)
        assert codes.count(200) == 4 and codes.count(831) == 26 and reads == 1, (codes, reads)
        mongo.held_earns = read_earns  # type: ignore[method-assign]
        # customer 2: two back-dated earns (past the horizon), then today's: the 30-day rolling
        # window of today holds the back-dated ones, so a fourth is refused
        assert await feed_a.earns("old", [2], "y1", earnEventDate=now - 10 * DAY) == [200]
        assert await feed_a.earns("old", [2], "y2", earnEventDate=now - 5 * DAY) == [200]
        assert await feed_a.earns("old", [2], "y3") == [200]
        assert await feed_a.earns("old", [2], "y4", earnEventDate=time.time() + 60) == [830]
    # what MongoDB holds obeys every limit
    docs = await mongo.earned.find({"badgeMetaId": "old", "status": "ACTIVE"}).to_list()
    per_day = [d for d in docs if abs(d["eventDate"] - day19) < 1]
    assert len(per_day) == 4


async def test_a_late_revoke_gives_back_live_counts_once(mongo: Repositories, redis_client: Redis,
                                                         settings: Settings) -> None:
    """Reservations expire (1 s here): a revokeEarn after that still gives back the lifetime
    and window counts from the earned badge's stored limits, and a second release of the
    same earn (a redelivered revoke) gives nothing back again."""
    now = time.time()
    badge = badge_def("late", now - 10 * DAY, customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 2},
        {"constraintType": "CUSTOMER_BADGE_FIXED_WINDOW", "durationType": "DAYS", "maxEarnLimit": 5}])
    await mongo.upsert_badge(badge)
    async with processor_on(mongo, redis_client, settings.redis_key_prefix, reservation_ttl=1.0) as \
            (_, store, feed):
        first = await feed.run({"requestId": "e1", "badgeMetaId": "late", "customerId": 5})
        assert first[0].code == 200 and await feed.earns("late", [5], "e2") == [200]
        assert await feed.earns("late", [5], "e3") == [830]
        await asyncio.sleep(2.5)
        assert not await redis_client.exists(store.reservation_key(ORG, "late", "e1"))  # expired
        earned_id = first[0].outcome["data"]["earnedBadgeId"]
        revoke = {"type": "revokeEarn", "requestId": "v1", "badgeMetaId": "late", "customerId": 5,
                  "earnedBadgeId": earned_id}
        assert [r.code for r in await feed.run(revoke)] == [200]
        assert await redis_client.exists(store.released_key(ORG, "late", "e1"))  # the tombstone
        stored = await mongo.earned_limits(ORG, "e1")
        assert stored is not None and {r.kind for r in stored} == {"l", "c"}
        assert await store.release(ORG, "late", "e1", stored) == "DONE"  # a redelivered revoke: nothing more
        assert await feed.earns("late", [5], "e4") == [200]
        assert await feed.earns("late", [5], "e5") == [830]  # 2 again, not 3
        window = store.counter_key(ORG, "late", limit_checks(badge, 5, time.time())[1].counter)
        assert as_int(await redis_client.get(window)) == 2


# ---------------------------------------------------------------- operator commands
def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "badge_worker.cli", "counters", *args], env=settings_env(settings),
                          capture_output=True, text=True, timeout=120)


async def test_counters_check_finds_differences_and_rebuild_repairs_them(
        mongo: Repositories, redis_client: Redis, settings: Settings) -> None:
    now = time.time()
    badge = badge_def("cli", now - 10 * DAY, customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 3},
        {"constraintType": "CUSTOMER_BADGE_ROLLING_WINDOW", "maxEarnForDays": 3, "rollForDays": 2}],
        badgeConstraints=[{"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "maxEarnLimit": 100}])
    await mongo.upsert_badge(badge)
    async with processor_on(mongo, redis_client, settings.redis_key_prefix) as (_, store, feed):
        assert await feed.earns("cli", [1, 2, 3], "a") == [200] * 3
        assert await feed.earns("cli", [1, 2], "b") == [200] * 2
        assert await counters.check_badge(store, mongo, ORG, "cli") == []
    ok = cli(settings, "check", "--org", str(ORG))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 difference(s)" in ok.stdout
    checks = limit_checks(badge, 1, time.time())
    await redis_client.hincrby(store.lifetime_key(ORG, "cli"), checks[0].counter, 5)  # counts drifted
    await redis_client.delete(store.counter_key(ORG, "cli", checks[2].counter))
    await redis_client.zrem(store.counter_key(ORG, "cli", checks[1].counter), "b-1")
    bad = cli(settings, "check", "--badge", "cli")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    lines = [line for line in bad.stdout.splitlines() if line.startswith("org=")]
    assert len(lines) == 3, bad.stdout
    assert f"counter=life:{checks[0].counter} redis=7 mongodb=2" in bad.stdout
    assert "redis=0 mongodb=5" in bad.stdout
    rebuilt = cli(settings, "rebuild", "--badge", "cli", "--org", str(ORG))
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "rebuilt from 5 earn(s)" in rebuilt.stdout
    again = cli(settings, "check", "--badge", "cli", "--org", str(ORG))
    assert again.returncode == 0, again.stdout + again.stderr
