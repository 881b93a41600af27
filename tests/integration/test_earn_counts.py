"""reserve.lua's counts after an earn (the events' currentEarnCount), against a real Redis and,
for windows past the retention horizon, MongoDB."""

from __future__ import annotations

import random
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from badge_worker.adapters.mongo import Repositories
from badge_worker.adapters.redis_store import CounterRef, HeldEarn, RedisStore
from badge_worker.domain.models import BadgeDefinition
from badge_worker.domain.windows import CheckKind, LimitCheck, limit_checks
from badge_worker.service import counters
from badge_worker.settings import Settings
from tests.integration.test_counters_state import ORG, badge_def, processor_on

T0 = float(int(time.time()) - 3600)
DAY = 86_400.0
BADGE = BadgeDefinition.model_validate({
    "id": "b1", "orgId": 1, "startOn": T0 - 30 * DAY,
    "customerConstraints": [{"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 2}],
    "badgeConstraints": [
        {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "maxEarnLimit": 4},
        {"constraintType": "BADGE_ROLLING_WINDOW", "rollType": "DAYS", "rollValue": 2, "maxEarnLimit": 5},
    ],
})


async def reserve(store: RedisStore, request_id: str, customer: int, t: float,
                  badge: BadgeDefinition = BADGE) -> tuple[str, tuple[int, ...]]:
    result = await store.reserve(1, badge.id, request_id, t, limit_checks(badge, customer, t))
    return result.status, result.counts


async def test_each_check_counts_the_earn_it_just_took(store: RedisStore) -> None:
    assert await store.rebuild(1, "b1", [])
    # (customer lifetime, badge's daily window, badge's 2-day rolling window)
    assert await reserve(store, "r1", 7, T0) == ("OK", (1, 1, 1))
    assert await reserve(store, "r2", 8, T0 + 1) == ("OK", (1, 2, 2))
    assert await reserve(store, "r3", 7, T0 + 2) == ("OK", (2, 3, 3))
    assert await reserve(store, "r4", 7, T0 + 3) == ("FULL", ())  # a refused earn has no counts


async def test_a_retry_reads_its_counts_and_takes_nothing(store: RedisStore, redis_client: Redis) -> None:
    assert await store.rebuild(1, "b1", [])
    assert await reserve(store, "r1", 7, T0) == ("OK", (1, 1, 1))
    assert await reserve(store, "r2", 8, T0 + 1) == ("OK", (1, 2, 2))
    again = await store.reserve(1, "b1", "r1", T0, limit_checks(BADGE, 7, T0))
    # held already: the counts as they are now, r1 included, nothing taken twice; r2 is in the
    # daily window, not in the rolling one, which ends at r1's event date
    assert (again.status, again.detail, again.counts) == ("OK", "DUP", (1, 2, 1))
    checks = limit_checks(BADGE, 7, T0)
    assert int(await redis_client.hget(store.lifetime_key(1, "b1"), checks[0].counter)) == 1
    assert int(await redis_client.get(store.counter_key(1, "b1", checks[1].counter))) == 2


async def test_a_provisional_earn_that_confirms_counts_itself_once(store: RedisStore) -> None:
    checks = limit_checks(BADGE, 7, T0)
    limits = [CounterRef.of(c) for c in checks]
    assert await store.rebuild(1, "b1", [HeldEarn("done", T0, limits, confirmed=True, earned_on=time.time()),
                                         HeldEarn("pending", T0 + 1, limits, confirmed=False)])
    confirmed = await store.reserve(1, "b1", "pending", T0 + 1, limit_checks(BADGE, 7, T0 + 1))
    assert (confirmed.detail, confirmed.counts) == ("CONFIRMED", (2, 2, 2))


async def test_checks_on_one_shared_counter_report_the_same_count(store: RedisStore) -> None:
    twins = BadgeDefinition.model_validate({"id": "tw", "orgId": 1, "startOn": T0 - DAY, "badgeConstraints": [
        {"constraintType": "BADGE_FIXED_VALUE", "maxEarnLimit": 5},
        {"constraintType": "BADGE_FIXED_VALUE", "maxEarnLimit": 3}]})
    checks = limit_checks(twins, 1, T0)
    assert checks[0].counter == checks[1].counter
    assert await store.rebuild(1, "tw", [])
    assert [await reserve(store, f"t{n}", n, T0, twins) for n in range(4)] == [
        ("OK", (1, 1)), ("OK", (2, 2)), ("OK", (3, 3)), ("FULL", ())]


async def test_an_earn_without_limits_has_no_counts(store: RedisStore) -> None:
    free = BadgeDefinition.model_validate({"id": "free", "orgId": 1, "startOn": T0 - DAY})
    assert await store.rebuild(1, "free", [])
    assert await reserve(store, "f1", 1, T0, free) == ("OK", ())


def model_count(check: LimitCheck, taken: dict[str, list[float]], t: float) -> int:
    events = taken.get(check.counter, [])
    if check.kind is CheckKind.ROLLING:
        return sum(1 for e in events if check.window_start is not None and check.window_start < e <= t)
    return len(events)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6))
async def test_counts_agree_with_a_model_of_the_counters(store: RedisStore, redis_client: Redis, seed: int) -> None:
    rnd = random.Random(seed)
    tag = f"n{seed}"
    assert await store.rebuild(1, tag, [])
    taken: dict[str, list[float]] = {}
    t = T0
    for n in range(40):
        t += rnd.choice([0, 600, 3600, 30_000, 90_000])
        checks = limit_checks(BADGE, rnd.randint(1, 4), t)
        result = await store.reserve(1, tag, f"e{n}", t, checks)
        if result.status != "OK":
            assert result.counts == ()
            continue
        for c in {c.counter: c for c in checks}.values():
            taken.setdefault(c.counter, []).append(t)
        assert result.counts == tuple(model_count(c, taken, t) for c in checks), n
    keys = [k async for k in redis_client.scan_iter(match=f"{store.prefix}:{{1:{tag}}}:*", count=10_000)]
    if keys:
        await redis_client.delete(*keys)


async def test_counts_of_windows_past_the_horizon_come_from_mongodb(
        mongo: Repositories, redis_client: Redis, settings: Settings) -> None:
    """Retention 1 day: a daily window of 20 days ago is counted from MongoDB (the cold path),
    for the first run and for a retry, whose reservation is held already."""
    now = time.time()
    await mongo.upsert_badge(badge_def("cold", now - 60 * DAY, customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_WINDOW", "durationType": "DAYS", "maxEarnLimit": 3,
         "startDate": now - 60 * DAY}], badgeConstraints=[{"constraintType": "BADGE_FIXED_VALUE", "maxEarnLimit": 9}]))
    old_day = now - 20 * DAY
    async with processor_on(mongo, redis_client, settings.redis_key_prefix, retention=DAY) as (_, store, feed):
        got = []
        for rid, customer, t in (("x1", 1, old_day), ("x2", 1, old_day + 60), ("x3", 2, old_day + 120)):
            result = (await feed.run({"requestId": rid, "badgeMetaId": "cold", "customerId": customer,
                                      "earnEventDate": t}))[0]
            assert result.event is not None, result.outcome
            got.append([c["currentEarnCount"] for c in result.event["data"]["earnConstraints"]])
        assert got == [[1, 1], [2, 2], [1, 3]]
        badge = await mongo.get_badge(ORG, "cold")
        assert badge is not None
        checks = limit_checks(badge, 1, old_day + 60)
        stale = await store.reserve(ORG, "cold", "x2", old_day + 60, checks)
        assert (stale.status, stale.stale) == ("STALE", (0,))  # the retry's window is not in Redis either
        again = await counters.reserve_cold(store, mongo, ORG, "cold", "x2", old_day + 60, checks, stale)
        assert (again.status, again.detail, again.counts) == ("OK", "DUP", (2, 3))
