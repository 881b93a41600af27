"""The limit scripts (adapters/lua/*.lua) against a real Redis."""

import asyncio
import random
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from badge_worker.adapters.redis_store import CounterRef, HeldEarn, NeedsRebuild, RedisStore
from badge_worker.domain import rules
from badge_worker.domain.models import BadgeDefinition
from badge_worker.domain.rules import LimitUsage
from badge_worker.domain.windows import CheckKind, limit_checks

# Recent: a window that ended more than the retention (14 days) before Redis's clock is not
# kept in Redis any more (test_counters_state.py covers those).
T0 = float(int(time.time()) - 3600)
BADGE = BadgeDefinition.model_validate({
    "id": "b1", "orgId": 1, "startOn": T0 - 86400 * 30,
    "customerConstraints": [{"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 2}],
    "badgeConstraints": [
        {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "maxEarnLimit": 4},
        {"constraintType": "BADGE_ROLLING_WINDOW", "rollType": "DAYS", "rollValue": 2, "maxEarnLimit": 5},
    ],
})


async def ready(store: RedisStore) -> None:
    assert await store.rebuild(1, "b1", [])


async def test_first_use_asks_for_a_rebuild(store: RedisStore) -> None:
    try:
        await store.reserve(1, "b1", "r1", T0, limit_checks(BADGE, 7, T0))
        raise AssertionError("expected NeedsRebuild")
    except NeedsRebuild:
        pass
    assert await store.rebuild(1, "b1", [])
    assert not await store.rebuild(1, "b1", [])  # a second rebuilder does not overwrite
    assert (await store.reserve(1, "b1", "r1", T0, limit_checks(BADGE, 7, T0))).status == "OK"


async def test_all_or_nothing_and_idempotent_per_request(store: RedisStore, redis_client) -> None:  # type: ignore[no-untyped-def]
    await ready(store)
    first = await store.reserve(1, "b1", "r1", T0, limit_checks(BADGE, 7, T0))
    assert (first.status, first.detail) == ("OK", "NEW")
    again = await store.reserve(1, "b1", "r1", T0, limit_checks(BADGE, 7, T0))
    assert (again.status, again.detail) == ("OK", "DUP")  # a retry never takes twice
    assert (await store.reserve(1, "b1", "r2", T0 + 1, limit_checks(BADGE, 7, T0 + 1))).status == "OK"
    full = await store.reserve(1, "b1", "r3", T0 + 2, limit_checks(BADGE, 7, T0 + 2))
    assert (full.status, full.index, full.count) == ("FULL", 0, 2)  # customer cap 2
    # nothing of r3 was taken: the badge-level counters still hold 2
    checks = limit_checks(BADGE, 7, T0)
    window = store.counter_key(1, "b1", checks[1].counter)
    rolling = store.counter_key(1, "b1", checks[2].counter)
    assert int(await redis_client.get(window)) == 2
    assert await redis_client.zcard(rolling) == 2


async def test_release_gives_the_slot_back(store: RedisStore) -> None:
    await ready(store)
    for n in range(2):
        assert (await store.reserve(1, "b1", f"r{n}", T0 + n, limit_checks(BADGE, 7, T0 + n))).status == "OK"
    assert (await store.reserve(1, "b1", "r9", T0 + 5, limit_checks(BADGE, 7, T0 + 5))).status == "FULL"
    assert await store.release(1, "b1", "r0") == "RELEASED"
    assert await store.release(1, "b1", "r0") == "DONE"  # idempotent: a tombstone says it was released
    assert (await store.reserve(1, "b1", "r9", T0 + 5, limit_checks(BADGE, 7, T0 + 5))).status == "OK"


async def test_rolling_full_reports_the_blocking_event(store: RedisStore) -> None:
    await ready(store)
    for n in range(5):  # 5 customers 8 h apart: rolling limit 5 in 2 days (daily window 4 not reached)
        t = T0 + n * 28_800
        assert (await store.reserve(1, "b1", f"r{n}", t, limit_checks(BADGE, 100 + n, t))).status == "OK"
    t = T0 + 5 * 28_800
    result = await store.reserve(1, "b1", "r5", t, limit_checks(BADGE, 200, t))
    assert result.status == "FULL"
    checks = limit_checks(BADGE, 200, t)
    assert checks[result.index].kind is CheckKind.ROLLING
    assert result.blocking_event == T0  # the oldest of the window must leave first: room at T0 + 2 days


async def test_racing_for_the_last_slot_exactly_k_win(store: RedisStore) -> None:
    await ready(store)
    attempts = [store.reserve(1, "b1", f"race-{n}", T0, limit_checks(BADGE, 1000 + n, T0)) for n in range(60)]
    results = await asyncio.gather(*attempts)
    assert sum(r.status == "OK" for r in results) == 4  # BADGE_FIXED_WINDOW daily limit


async def test_rebuild_restores_counts_and_provisional_earns(store: RedisStore) -> None:
    checks = limit_checks(BADGE, 7, T0)
    limits = [CounterRef.of(c) for c in checks]
    held = [HeldEarn("done", T0, limits, confirmed=True, earned_on=time.time()),
            HeldEarn("pending", T0 + 1, limits, confirmed=False)]
    assert await store.rebuild(1, "b1", held)
    # the confirmed one is a duplicate; the pending one fits with itself excluded: confirmed
    assert (await store.reserve(1, "b1", "done", T0, checks)).detail == "DUP"
    assert (await store.reserve(1, "b1", "pending", T0 + 1, checks)).detail == "CONFIRMED"
    # now the customer has 2: a third is refused
    assert (await store.reserve(1, "b1", "third", T0 + 2, limit_checks(BADGE, 7, T0 + 2))).status == "FULL"


async def test_a_provisional_earn_that_no_longer_fits_gives_back_its_counts(store: RedisStore, redis_client) -> None:  # type: ignore[no-untyped-def]
    checks = limit_checks(BADGE, 7, T0)
    limits = [CounterRef.of(c) for c in checks]
    held = [HeldEarn(f"p{n}", T0 + n, limits, confirmed=False) for n in range(3)]  # 3 > customer cap 2
    assert await store.rebuild(1, "b1", held)
    outcomes = [await store.reserve(1, "b1", f"p{n}", T0 + n, checks) for n in range(3)]
    # all three were counted; the first that finds itself over the cap releases itself
    assert [o.status for o in outcomes] == ["FULL", "OK", "OK"]
    # the customer's lifetime count lives in the badge's lifetime hash
    assert int(await redis_client.hget(store.lifetime_key(1, "b1"), checks[0].counter)) == 2


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6))
async def test_lua_agrees_with_the_domain_rule(store: RedisStore, redis_client, seed: int) -> None:  # type: ignore[no-untyped-def]
    """The same earns through reserve.lua and through rules.check_limits on a model of the
    counters: the same ones are accepted."""
    rnd = random.Random(seed)
    tag = f"x{seed}"
    assert await store.rebuild(1, tag, [])
    model: dict[str, list[float]] = {}
    t = T0
    for n in range(40):
        t += rnd.choice([0, 600, 3600, 30_000, 90_000])
        customer = rnd.randint(1, 4)
        checks = limit_checks(BADGE, customer, t)
        usage = {}
        for c in checks:
            events = model.get(c.counter, [])
            if c.kind is CheckKind.ROLLING:
                inside = sorted(e for e in events if c.window_start is not None and c.window_start < e <= t)
                usage[c.counter] = LimitUsage(len(inside), inside[len(inside) - c.limit] if len(inside) >= c.limit
                                              and c.limit > 0 else None)
            else:
                usage[c.counter] = LimitUsage(len(events))
        expected = rules.check_limits(checks, usage)
        got = await store.reserve(1, tag, f"e{n}", t, checks)
        assert (got.status == "OK") == (expected is None), (n, got, expected)
        if expected is None:
            for c in checks:
                model.setdefault(c.counter, []).append(t)
        else:
            check = checks[got.index]
            assert rules.limit_rejection(check, LimitUsage(got.count, got.blocking_event)).detail == expected.detail
    keys = [k async for k in redis_client.scan_iter(match=f"{store.prefix}:{{1:{tag}}}:*", count=10_000)]
    if keys:
        await redis_client.delete(*keys)
