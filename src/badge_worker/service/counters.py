"""Limit counters beyond the hot path: rebuilds from MongoDB, windows past the retention
horizon, and the operator's `badge-worker counters check|rebuild` (docs/counters.md).

- `rebuild_badge`: the chunked rebuild of one badge's counters (reservers wait meanwhile).
- `reserve_cold`: an earn with a check whose window Redis no longer keeps (dated more than
  the retention before the counters' clock) is decided from MongoDB under the badge's cold
  lock, never against a counter that expired and would read 0.
- `check_badge` / `run_check` / `run_rebuild`: compare Redis with MongoDB; force a rebuild.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from pymongo import AsyncMongoClient

from badge_worker import constants as K
from badge_worker.adapters import redis_client
from badge_worker.adapters.mongo import Repositories
from badge_worker.adapters.redis_store import (
    CounterRef,
    HeldEarn,
    LockLost,
    NeedsRebuild,
    RebuildResult,
    RedisStore,
    ReserveResult,
)
from badge_worker.domain.windows import CheckKind, LimitCheck
from badge_worker.errors import InfrastructureUnavailable
from badge_worker.settings import Settings

log = structlog.get_logger("badge_worker.counters")


# ------------------------------------------------------------------ seq watermark
async def know_badge(store: RedisStore, repos: Repositories, org: int, badge: str) -> None:
    """On this process's first use of a badge, take its MongoDB watermark as the lowest seq
    Redis may answer (below it, Redis went back in time): one find per badge and process."""
    mem = store.memory(org, badge)
    if mem.known:
        return
    if mem.knowing is None:  # one read for all the commands that need it now
        reading = mem.knowing = asyncio.ensure_future(repos.counter_mark(org, badge))

        def read(done: asyncio.Future[int]) -> None:
            if done.cancelled() or done.exception() is not None:
                if mem.knowing is done:
                    mem.knowing = None  # failed: the next caller reads again
            else:
                store.observe(org, badge, done.result())
                mem.known = True

        reading.add_done_callback(read)
    await asyncio.shield(mem.knowing)


async def mark_badge(store: RedisStore, repos: Repositories, org: int, badge: str) -> None:
    """Raise the badge's MongoDB watermark to the highest seq this process saw, at most once
    per `store.mark_interval` (one update by _id)."""
    seq = store.mark_due(org, badge)
    if seq is not None:
        await repos.raise_counter_mark(org, badge, seq)


# ------------------------------------------------------------------ rebuild
async def rebuild_badge(store: RedisStore, repos: Repositories, org: int, badge: str, *, force: bool = False,
                        now: float | None = None, timeout: float = 120.0) -> RebuildResult:
    """Rebuild the badge's counters from MongoDB when Redis does not hold trusted ones (or
    always, with `force`). While another process rebuilds them, wait for it (TimeoutError
    after `timeout`: an infrastructure error, the batch is retried)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        token = uuid.uuid4().hex
        start = await store.rebuild_begin(org, badge, token, force=force)
        if start.status == "READY":
            return RebuildResult(False)
        if start.status == "GO":
            lock = store.rebuild_lock_key(org, badge)
            try:
                async with store.keep_lock(lock, token):
                    mark = await repos.counter_mark(org, badge)
                    held = await repos.held_earns(org, badge, revoked_since=time.time() - store.released_ttl)
                    generation = store.next_generation(org, badge, start, mark)
                    # Raised before the counters are published: a Redis that later loses this
                    # rebuild answers below the watermark, and is rebuilt again.
                    await repos.raise_counter_mark(org, badge, generation * K.SEQ_GENERATION)
                return await store.rebuild_apply(org, badge, token, held, start=start, generation=generation, now=now)
            except LockLost:
                log.warning("counters_rebuild_lock_lost", orgId=org, badgeMetaId=badge)
                continue
            except BaseException:
                with contextlib.suppress(Exception):
                    await store.unlock(lock, token)
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"the counters of {org}:{badge} are being rebuilt elsewhere")
        await asyncio.sleep(delay)
        delay = min(0.2, delay * 2)


# ------------------------------------------------------------------ windows past the horizon
@dataclass
class _ColdSnapshot:
    """One MongoDB read of a badge's earns, reusable while nothing it counts can change: the
    same generation and cold count (every cold-path commit and every release moves it on),
    and only for windows already past the horizon when it was read."""

    gen: str
    cold: int
    clock: float
    earns: list[HeldEarn]


def _past_horizon(store: RedisStore, check: LimitCheck, event_ts: float, clock: float) -> bool:
    ref = CounterRef.of(check)
    if ref.kind == "c":
        return (ref.end or 0.0) + store.retention <= clock
    if ref.kind == "z":
        return event_ts + store.retention <= clock
    return False


async def _snapshot(store: RedisStore, repos: Repositories, org: int, badge: str, checks: Sequence[LimitCheck],
                    event_ts: float, clock: float) -> _ColdSnapshot:
    state = await store.badge_state(org, badge)
    if state is None:
        raise NeedsRebuild(badge)
    mem = store.memory(org, badge)
    snap: _ColdSnapshot | None = mem.cold_cache
    if (snap is not None and snap.gen == state.get("gen") and snap.cold == int(state.get("cold", 0))
            and all(_past_horizon(store, c, event_ts, snap.clock) for c in checks)):
        return snap
    # `clock` put these windows past the horizon, so no reserve takes them any more: every
    # earn counted in them has its intent in MongoDB already (an intent precedes its reserve).
    earns = await repos.held_earns(org, badge)
    snap = _ColdSnapshot(state.get("gen", ""), int(state.get("cold", 0)), clock, earns)
    mem.cold_cache = snap
    return snap


def _given(store: RedisStore, earns: Sequence[HeldEarn], holding: set[str], check: LimitCheck, own: str,
           event_ts: float) -> tuple[int, float | None]:
    """The count of a check from MongoDB, by the rule reserve.lua applies to a live counter."""
    young = time.time() - store.reservation_ttl
    events: list[float] = []
    for earn in earns:
        if earn.request_id == own or earn.revoked_at is not None:
            continue
        # A PENDING earn counts once it took its counts (it holds a reservation), or when it is
        # too old for that to be known (its reservation may have expired): not while it waits.
        if not earn.confirmed and earn.request_id not in holding and (earn.earned_on or 0.0) >= young:
            continue
        if any(ref.counter == check.counter for ref in earn.limits):
            events.append(earn.event_ts)
    if check.kind is not CheckKind.ROLLING:
        return len(events), None
    lo = check.window_start if check.window_start is not None else float("-inf")
    inside = sorted(e for e in events if lo < e <= event_ts)
    count = len(inside)
    blocking = inside[count - check.limit] if count >= check.limit and check.limit > 0 else None
    return count, blocking


async def reserve_cold(store: RedisStore, repos: Repositories, org: int, badge: str, request_id: str,
                       event_ts: float, checks: Sequence[LimitCheck], stale: ReserveResult) -> ReserveResult:
    """Reserve an earn some of whose checks (`stale.stale`) are past the retention horizon:
    count those from MongoDB, holding the badge's cold lock (one decider at a time, in every
    process), and let reserve.lua check and take the rest atomically, if the lock is still ours."""
    needed = set(stale.stale)
    clock = stale.clock
    for _ in range(3):
        try:
            async with store.cold_lock(org, badge) as token:
                for _ in range(8):
                    chosen = [checks[i] for i in sorted(needed)]
                    snap = await _snapshot(store, repos, org, badge, chosen, event_ts, clock)
                    pending = [e.request_id for e in snap.earns if not e.confirmed and e.revoked_at is None]
                    holding = await store.holding(org, badge, pending)
                    given = {i: _given(store, snap.earns, holding, checks[i], request_id, event_ts) for i in needed}
                    result = await store.reserve(org, badge, request_id, event_ts, checks, given=given,
                                                 cold_token=token)
                    if result.status == "STALE":  # the clock moved on meanwhile: more checks to count
                        needed |= set(result.stale)
                        clock = result.clock
                        continue
                    _remember(store, org, badge, snap, result, request_id, event_ts, checks)
                    log.info("counters_cold_path", orgId=org, badgeMetaId=badge, checks=sorted(needed),
                             status=result.status, detail=result.detail)
                    return result
        except LockLost:  # held past its ttl (a stalled process): decide again
            store.memory(org, badge).cold_cache = None
            continue
    raise InfrastructureUnavailable("the cold path of these counters could not complete")


def _remember(store: RedisStore, org: int, badge: str, snap: _ColdSnapshot, result: ReserveResult,
              request_id: str, event_ts: float, checks: Sequence[LimitCheck]) -> None:
    """Keep the snapshot up to date with our own commit, when nobody else changed anything."""
    if result.status != "OK" or result.detail == "DUP":
        return
    mem = store.memory(org, badge)
    if mem.cold_cache is snap and result.cold == snap.cold + 1:
        snap.earns = [e for e in snap.earns if e.request_id != request_id]  # its intent, if read
        snap.earns.append(HeldEarn(request_id, event_ts, [CounterRef.of(c) for c in checks], confirmed=True,
                                   earned_on=time.time()))
        snap.cold = result.cold
    else:
        mem.cold_cache = None


# ------------------------------------------------------------------ operator tools
@dataclass(frozen=True)
class Difference:
    org: int
    badge: str
    counter: str
    redis: Any
    mongodb: Any

    def line(self) -> str:
        return f"org={self.org} badge={self.badge} counter={self.counter} redis={self.redis} mongodb={self.mongodb}"


async def check_badge(store: RedisStore, repos: Repositories, org: int, badge: str) -> list[Difference] | None:
    """Redis's counts of one badge against what MongoDB says they should be; None when Redis
    holds none (it rebuilds them on next use). Only live windows are compared (a key past its
    window awaits collection). Earns in flight meanwhile can show as a passing difference."""
    state = await store.badge_state(org, badge)
    if state is None:
        return None
    seconds, micros = await store.client.time()
    clock = max(float(state.get("clock", 0.0)), seconds + micros / 1e6)
    expected = store.expected(org, badge, await repos.held_earns(org, badge), clock)
    actual = await store.snapshot(org, badge)
    out: list[Difference] = []
    for name in sorted(set(expected.life) | set(actual["life"])):
        want, have = expected.life.get(name, 0), actual["life"].get(name, 0)
        if want != have:
            out.append(Difference(org, badge, f"life:{name}", have, want))
    live_c = {k for k, (_, e) in actual["c"].items() if e > clock} | set(expected.counters)
    for key in sorted(live_c):
        want = expected.counters.get(key, (0, 0.0))[0]
        have = actual["c"].get(key, (0, 0.0))[0]
        if want != have:
            out.append(Difference(org, badge, key, have, want))
    for key in sorted(set(expected.zsets) | {k for k, (_, e) in actual["z"].items() if e > clock}):
        entries, _, roll = expected.zsets.get(key, ([], 0.0, None))
        keep_from = clock - store.retention - roll if roll is not None else float("-inf")
        want_set = {m for ts, m in entries if ts > keep_from}
        have_set = {m for ts, m in actual["z"].get(key, ([], 0.0))[0] if ts > keep_from}
        if want_set != have_set:
            out.append(Difference(org, badge, key, len(have_set), len(want_set)))
    return out


@contextlib.asynccontextmanager
async def _connected(settings: Settings) -> Any:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri, tz_aware=False)
    redis = redis_client.connect(settings, max_connections=8)
    try:
        yield RedisStore(redis, prefix=settings.redis_key_prefix), Repositories(mongo[settings.mongodb_database])
    finally:
        await redis.aclose()
        await mongo.close()


async def _badges(repos: Repositories, badge: str | None, org: int | None) -> list[tuple[int, str]]:
    found = await repos.badge_ids(org)
    return [(o, b) for o, b in found if badge is None or b == badge]


async def run_check(settings: Settings, badge: str | None = None, org: int | None = None,
                    out: Any = None) -> int:
    """`badge-worker counters check`: print every difference; 1 if any, else 0."""
    import sys

    out = out or sys.stdout
    differences = 0
    async with _connected(settings) as (store, repos):
        badges = await _badges(repos, badge, org)
        for o, b in badges:
            found = await check_badge(store, repos, o, b)
            if found is None:
                print(f"org={o} badge={b}: not loaded in Redis (rebuilt from MongoDB on next use)", file=out)
                continue
            for diff in found:
                print(diff.line(), file=out)
            differences += len(found)
    print(f"checked {len(badges)} badge(s), {differences} difference(s)", file=out)
    return 1 if differences else 0


async def run_rebuild(settings: Settings, badge: str | None = None, org: int | None = None,
                      out: Any = None) -> int:
    """`badge-worker counters rebuild`: rebuild the counters of the badges from MongoDB."""
    import sys

    out = out or sys.stdout
    async with _connected(settings) as (store, repos):
        badges = await _badges(repos, badge, org)
        for o, b in badges:
            result = await rebuild_badge(store, repos, o, b, force=True)
            print(f"org={o} badge={b}: rebuilt from {result.earns} earn(s) in {result.chunks} chunk(s) "
                  f"of at most {result.largest_chunk} entries, generation {result.generation}", file=out)
    print(f"rebuilt {len(badges)} badge(s)", file=out)
    return 0
