"""Redis: the atomic limit counters (Lua scripts in lua/); the requestId cache is request_cache.py.

Keys, their lifetimes, the retention horizon and how a lost or rolled-back Redis is detected
and repaired are described in docs/counters.md ("Counter state: lifetimes and repair").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from badge_worker import constants as K
from badge_worker.adapters import redis_pipe
from badge_worker.adapters.redis_batch import ScriptBatcher
from badge_worker.domain.timeutil import DAY, WEEK, TimeUnit
from badge_worker.domain.windows import CheckKind, LimitCheck


def _lua(name: str) -> str:
    folder = resources.files("badge_worker.adapters").joinpath("lua")
    return folder.joinpath("common.lua").read_text(encoding="utf-8") + "\n" + \
        folder.joinpath(name).read_text(encoding="utf-8")


def _score(ts: float) -> str:
    return repr(float(ts))


_ROLL_UNIT = {TimeUnit.DAYS: DAY, TimeUnit.WEEKS: WEEK, TimeUnit.MONTHS: 31 * DAY}  # longest month
_LEGACY_ROLL = re.compile(r":r:(\d+)(DAYS|WEEKS|MONTHS)$")
_LEGACY_CYCLE = re.compile(r":w:(-?\d+)$")
LEGACY_WINDOW = 366 * DAY  # a stored fixed window whose end was not recorded: assume at most this long


@dataclass(frozen=True)
class CounterRef:
    """One counter an earn takes, as recorded in its intent / earned badge (`limits`).

    kind 'l': a lifetime cap (a field of the badge's lifetime hash, kept as long as the badge
    is in use); 'c': one fixed-window cycle ending at `end`; 'z': a rolling window whose longest
    length is `roll` seconds (a set of event dates)."""

    kind: str
    counter: str
    end: float | None = None
    roll: float | None = None

    @classmethod
    def of(cls, check: LimitCheck) -> CounterRef:
        if check.kind is CheckKind.ROLLING:
            if check.roll_unit is not None and check.roll_value is not None:
                roll = _ROLL_UNIT[check.roll_unit] * check.roll_value
            else:
                roll = (check.window_end or 0.0) - (check.window_start or 0.0)
            return cls("z", check.counter, roll=roll)
        if check.window_end is None:
            return cls("l", check.counter)
        return cls("c", check.counter, end=check.window_end)

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": self.kind, "counter": self.counter}
        if self.end is not None:
            doc["end"] = self.end
        if self.roll is not None:
            doc["roll"] = self.roll
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], event_ts: float) -> CounterRef:
        """Also reads entries written before lifetimes were recorded: {kind 'c'|'z', counter}."""
        kind, counter = str(doc.get("kind")), str(doc["counter"])
        if kind == "l" or (kind == "c" and doc.get("end") is None and counter.endswith(":life")):
            return cls("l", counter)
        if kind == "z":
            roll = doc.get("roll")
            if roll is None:
                found = _LEGACY_ROLL.search(counter)
                roll = _ROLL_UNIT[TimeUnit(found.group(2))] * int(found.group(1)) if found else LEGACY_WINDOW
            return cls("z", counter, roll=float(roll))
        end = doc.get("end")
        if end is None:
            found = _LEGACY_CYCLE.search(counter)
            end = (int(found.group(1)) / 1000.0 if found else event_ts) + LEGACY_WINDOW
        return cls("c", counter, end=float(end))


def limit_docs(checks: Iterable[LimitCheck]) -> list[dict[str, Any]]:
    """The `limits` an earn intent records: each counter once (two checks may share one)."""
    seen: dict[str, dict[str, Any]] = {}
    for check in checks:
        seen.setdefault(check.counter, CounterRef.of(check).to_doc())
    return list(seen.values())


@dataclass(frozen=True)
class ReserveResult:
    status: str  # OK | FULL | STALE
    detail: str = ""  # NEW | DUP | CONFIRMED for OK
    index: int = -1  # FULL: which check (0-based)
    count: int = 0
    blocking_event: float | None = None
    seq: int = 0  # the badge's sequence after this call
    cold: int = 0  # the badge's count of cold-path commits and releases (service/counters.py)
    stale: tuple[int, ...] = ()  # STALE: the checks (0-based) whose window is past the retention horizon
    clock: float = 0.0  # STALE: the counters' clock that put them past it
    counts: tuple[int, ...] = ()  # OK: per check, its count right after this earn (this earn included)


@dataclass(frozen=True)
class HeldEarn:
    """An earn as recorded in MongoDB, for a rebuild: ACTIVE (confirmed), PENDING (provisional)
    or, for the release tombstones, REVOKED."""

    request_id: str
    event_ts: float
    limits: Sequence[CounterRef]
    confirmed: bool
    earned_on: float | None = None  # the message time of the earn
    revoked_at: float | None = None  # set for a revoked earn (not counted)


@dataclass(frozen=True)
class RebuildResult:
    applied: bool
    earns: int = 0
    chunks: int = 0  # load calls
    largest_chunk: int = 0  # entries in the largest one
    generation: int = 0

    def __bool__(self) -> bool:
        return self.applied


@dataclass(frozen=True)
class RebuildStart:
    status: str  # READY | BUSY | GO
    seq: int = 0
    clock: float = 0.0
    server_time: float = 0.0


class NeedsRebuild(Exception):
    """The badge's counters are not in Redis, or cannot be trusted (first use, Redis lost its
    data, restarted, failed over, or went back in time)."""

    def __init__(self, badge: str, why: str = "MISSING") -> None:
        super().__init__(f"{badge}: {why}")
        self.why = why


class LockLost(Exception):
    """A lock (rebuild or cold) expired while we held it: start that step again."""


@dataclass
class Expected:
    """A badge's counters as MongoDB says they should be (RedisStore.expected)."""

    life: dict[str, int] = field(default_factory=dict)  # lifetime counter -> count
    counters: dict[str, tuple[int, float]] = field(default_factory=dict)  # key -> (count, expires)
    zsets: dict[str, tuple[list[tuple[float, str]], float, float]] = field(default_factory=dict)
    # rolling key -> ([(event, requestId)], expires, roll)
    # (requestId, 'provisional' (PENDING) | 'held' (ACTIVE, recent), taken, expires)
    reservations: list[tuple[str, str, list[list[str]], float]] = field(default_factory=list)
    revoked: list[HeldEarn] = field(default_factory=list)


# _BadgeKeys forms the per-request keys as a base + requestId: their templates end with it
assert K.RESERVATION_KEY.endswith(":{request_id}") and K.RELEASED_KEY.endswith(":{request_id}")


@dataclass(slots=True)
class _BadgeKeys:
    """One badge's keys, formatted once: every reserve names them (their formatting was ~2%
    of the worker's CPU); per-request keys are a base plus the requestId."""

    ready: str
    index: str
    lifetime: str
    cold_lock: str
    reservation: str  # + requestId
    released: str  # + requestId
    counters: dict[str, str] = field(default_factory=dict)


@dataclass
class _BadgeMemory:
    """What this process has seen of one badge's counters."""

    floor: int = 0  # the highest seq seen: Redis answering lower went back in time
    known: bool = False  # the MongoDB watermark was read into `floor`
    knowing: asyncio.Future[int] | None = None  # that read, while it runs
    marked: int = 0  # the highest seq this process wrote to the watermark
    marked_at: float = 0.0  # monotonic
    cold_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    cold_cache: Any = None  # service/counters.py
    reserves: int = 0  # reserves since the last collection (gc.lua)
    dead: list[str] = field(default_factory=list)  # keys the last collection found due, deleted by the next
    collecting: bool = False  # a collection is in flight


class RedisStore:
    def __init__(self, client: Redis, prefix: str = K.KEY_PREFIX, *,
                 retention: float = K.COUNTER_RETENTION_SECONDS,
                 reservation_ttl: float = K.RESERVATION_TTL_SECONDS,
                 released_ttl: float = K.RELEASED_TTL_SECONDS,
                 idle_ttl: int = K.BADGE_IDLE_TTL_SECONDS,
                 max_ahead: float = K.CLOCK_MAX_AHEAD_SECONDS,
                 gc_batch: int = K.GC_BATCH,
                 gc_every: int = K.GC_EVERY,
                 chunk: int = K.REBUILD_CHUNK,
                 mark_interval: float = K.COUNTER_MARK_INTERVAL_SECONDS) -> None:
        self.client = client
        self.prefix = prefix
        self._keys: dict[tuple[int, str], _BadgeKeys] = {}
        self.retention, self.reservation_ttl, self.released_ttl = retention, reservation_ttl, released_ttl
        self.idle_ttl, self.max_ahead, self.gc_batch, self.chunk = idle_ttl, max_ahead, gc_batch, chunk
        self.gc_every = gc_every
        self.mark_interval = mark_interval
        self.lock_ttl_ms = K.COUNTER_LOCK_TTL_MS
        self._memory: dict[tuple[int, str], _BadgeMemory] = {}
        self.pipe = redis_pipe.for_client(client)  # the hot path's pipelines (None on a cluster)
        self.calls = ScriptBatcher(client, raw=self.pipe)  # reserve and release: one pipeline per loop tick
        self._reserve: AsyncScript = client.register_script(_lua("reserve.lua"))
        self._release: AsyncScript = client.register_script(_lua("release.lua"))
        self._release_restored: AsyncScript = client.register_script(_lua("release_restored.lua"))
        self._begin: AsyncScript = client.register_script(_lua("rebuild_begin.lua"))
        self._clear: AsyncScript = client.register_script(_lua("rebuild_clear.lua"))
        self._load: AsyncScript = client.register_script(_lua("rebuild_load.lua"))
        self._finish: AsyncScript = client.register_script(_lua("rebuild_finish.lua"))
        self._lock: AsyncScript = client.register_script(_lua("lock.lua"))
        self._gc: AsyncScript = client.register_script(_lua("gc.lua"))

    async def aclose(self) -> None:
        """Close the raw pipelines' pool (the client is its owner's to close)."""
        if self.pipe is not None:
            await self.pipe.aclose()

    # ---- keys
    def _key(self, template: str, org: int, badge: str, **extra: str) -> str:
        return template.format(prefix=self.prefix, org=org, badge=badge, **extra)

    def _keys_of(self, org: int, badge: str) -> _BadgeKeys:
        keys = self._keys.get((org, badge))
        if keys is None:
            keys = self._keys[(org, badge)] = _BadgeKeys(
                self.ready_key(org, badge), self.index_key(org, badge), self.lifetime_key(org, badge),
                self.cold_lock_key(org, badge), self._key(K.RESERVATION_KEY, org, badge, request_id=""),
                self._key(K.RELEASED_KEY, org, badge, request_id=""))
            while len(self._keys) > 100_000:
                self._keys.pop(next(iter(self._keys)))
        return keys

    def ready_key(self, org: int, badge: str) -> str:
        return self._key(K.READY_KEY, org, badge)

    def counter_key(self, org: int, badge: str, counter: str) -> str:
        return self._key(K.COUNTER_KEY, org, badge, counter=counter)

    def lifetime_key(self, org: int, badge: str) -> str:
        return self._key(K.LIFETIME_KEY, org, badge)

    def reservation_key(self, org: int, badge: str, request_id: str) -> str:
        return self._key(K.RESERVATION_KEY, org, badge, request_id=request_id)

    def released_key(self, org: int, badge: str, request_id: str) -> str:
        return self._key(K.RELEASED_KEY, org, badge, request_id=request_id)

    def index_key(self, org: int, badge: str) -> str:
        return self._key(K.EXPIRY_INDEX_KEY, org, badge)

    def rebuild_lock_key(self, org: int, badge: str) -> str:
        return self._key(K.REBUILD_LOCK_KEY, org, badge)

    def cold_lock_key(self, org: int, badge: str) -> str:
        return self._key(K.COLD_LOCK_KEY, org, badge)

    # ---- what this process has seen
    def memory(self, org: int, badge: str) -> _BadgeMemory:
        mem = self._memory.get((org, badge))
        if mem is None:
            mem = self._memory[(org, badge)] = _BadgeMemory()
            while len(self._memory) > 100_000:  # forget the oldest badges (their floor restarts at the watermark)
                self._memory.pop(next(iter(self._memory)))
        return mem

    def observe(self, org: int, badge: str, seq: int) -> None:
        mem = self.memory(org, badge)
        mem.floor = max(mem.floor, seq)

    def mark_due(self, org: int, badge: str) -> int | None:
        """The seq to write to the badge's MongoDB watermark now, at most once per interval."""
        mem = self.memory(org, badge)
        now = time.monotonic()
        if mem.floor > mem.marked and now - mem.marked_at >= self.mark_interval:
            mem.marked, mem.marked_at = mem.floor, now
            return mem.floor
        return None

    # ---- limits
    def _reserve_call(self, org: int, badge: str, request_id: str, event_ts: float, checks: Sequence[LimitCheck],
                      now: float | None, given: Mapping[int, tuple[int, float | None]] | None,
                      cold_token: str | None) -> tuple[list[str], list[Any]]:
        known = self._keys_of(org, badge)
        keys = [known.ready, known.reservation + request_id, known.released + request_id, known.index,
                known.lifetime, known.cold_lock]
        positions: dict[str, int] = {}
        args: list[Any] = [request_id, _score(event_ts), "" if now is None else _score(now), _score(self.max_ahead),
                           _score(self.retention), _score(self.reservation_ttl), self.memory(org, badge).floor,
                           self.gc_batch, self.idle_ttl, cold_token or "", len(checks)]
        for i, check in enumerate(checks):
            ref = CounterRef.of(check)
            if ref.kind == "l":
                where = ref.counter
            else:
                key = known.counters.get(ref.counter)
                if key is None:
                    key = known.counters[ref.counter] = self.counter_key(org, badge, ref.counter)
                if key not in positions:
                    keys.append(key)
                    positions[key] = len(keys)
                where = str(positions[key])
            if ref.kind == "z":
                bound = _score(check.window_start) if check.window_start is not None else "-inf"
            elif ref.kind == "c":
                bound = _score(ref.end or 0.0)
            else:
                bound = ""
            decided = (given or {}).get(i)
            args += [ref.kind, where, check.limit, bound, _score(ref.roll or 0.0),
                     "" if decided is None else decided[0],
                     "" if decided is None or decided[1] is None else _score(decided[1])]
        return keys, args

    def _reserve_reply(self, org: int, badge: str, reply: Any) -> ReserveResult:
        status = _text(reply[0])
        if status == "REBUILD":
            raise NeedsRebuild(badge, _text(reply[1]))
        if status == "LOCK":
            raise LockLost(badge)
        if status == "OK":
            result = ReserveResult("OK", _text(reply[1]), seq=int(reply[2]), cold=int(reply[3]),
                                   counts=tuple(int(c) for c in reply[4:]))
        elif status == "STALE":
            result = ReserveResult("STALE", seq=int(reply[1]), cold=int(reply[2]), clock=float(_text(reply[3])),
                                   stale=tuple(int(i) - 1 for i in reply[4:]))
        else:
            blocking = float(_text(reply[3])) if reply[3] else None
            result = ReserveResult("FULL", index=int(reply[1]) - 1, count=int(reply[2]), blocking_event=blocking,
                                   seq=int(reply[4]), cold=int(reply[5]))
        self.observe(org, badge, result.seq)
        return result

    async def reserve(self, org: int, badge: str, request_id: str, event_ts: float, checks: Sequence[LimitCheck],
                      *, now: float | None = None, given: Mapping[int, tuple[int, float | None]] | None = None,
                      cold_token: str | None = None) -> ReserveResult:
        """Check and take every limit of one earn (reserve.lua).

        `now`: a clock for the counters ahead of Redis's own (at most `max_ahead` ahead; tests
        run simulated days with it). `given` (with `cold_token`, the badge's cold lock): counts
        decided from MongoDB for checks whose window Redis no longer keeps (service/counters.py).
        Raises NeedsRebuild; STALE names the checks that need `given` counts."""
        keys, args = self._reserve_call(org, badge, request_id, event_ts, checks, now, given, cold_token)
        collection = self._collection_due(org, badge, 1)
        if collection is None:
            reply = await self._declared(self._reserve, keys, args)
        else:  # queued in the same tick: the same pipeline, no round trip of its own
            reply, _ = await asyncio.gather(self._declared(self._reserve, keys, args), collection)
        return self._reserve_reply(org, badge, reply)

    async def _declared(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """Call a script that may answer {'KEYS', key...}: keys it must touch that the call did
        not declare (the counters a stored reservation lists); call again with them declared."""
        for _ in range(3):
            reply = await self.calls.call(script, keys, args)
            if not (isinstance(reply, list) and reply and _text(reply[0]) == "KEYS"):
                return reply
            keys = keys + [k for k in dict.fromkeys(_text(k) for k in reply[1:]) if k not in keys]
        raise RuntimeError(f"{keys[0]}: the script kept asking for keys it was given")

    # ---- collecting keys whose time has come (gc.lua)
    def _collection_due(self, org: int, badge: str, reserves: int) -> Any:
        """A collection to run beside these reserves, every `gc_every` reserves of a badge (or
        None): it deletes what the previous one found due and finds the next batch, up to
        `gc_batch` keys per reserve, so memory follows the live windows."""
        mem = self.memory(org, badge)
        mem.reserves += reserves
        if mem.collecting or mem.reserves < self.gc_every:
            return None
        fetch, mem.reserves = self.gc_batch * mem.reserves, 0
        return self._collect_once(org, badge, fetch)

    async def _collect_once(self, org: int, badge: str, fetch: int) -> int:
        """One gc.lua call; returns how many due keys it found for the next one. Best effort:
        a failure leaves the keys for a later call (they also carry their own Redis expiry)."""
        mem = self.memory(org, badge)
        mem.collecting, due, mem.dead = True, mem.dead, []
        try:
            reply = await self.calls.call(self._gc, [self.ready_key(org, badge), self.index_key(org, badge), *due],
                                          [fetch])
            mem.dead = [_text(k) for k in reply[1:]]
        except Exception:
            mem.dead = due
        finally:
            mem.collecting = False
        return len(mem.dead)

    async def collect(self, org: int, badge: str, rounds: int = 100) -> None:
        """Collect every key of the badge whose time has come (tests, `counters check`)."""
        for _ in range(rounds):
            if not await self._collect_once(org, badge, max(self.gc_batch * self.gc_every, 1)):
                return

    async def reserve_many(self, items: Sequence[tuple[int, str, str, float, Sequence[LimitCheck], float | None]]
                           ) -> list[ReserveResult | Exception]:
        """reserve() for many earns in one pipeline (one round trip, no task per earn), applied
        in this order: items are (org, badge, requestId, event date, checks, now). Each item's
        result, or its error as the value (NeedsRebuild, a Redis error)."""
        calls = [self._reserve_call(org, badge, request_id, event_ts, checks, now, None, None)
                 for org, badge, request_id, event_ts, checks, now in items]
        per_badge: dict[tuple[int, str], int] = {}
        for org, badge, *_ in items:
            per_badge[(org, badge)] = per_badge.get((org, badge), 0) + 1
        # queued in the same tick as the reserves: the same pipeline, no round trip of their own
        collections = [c for (org, badge), n in per_badge.items() if (c := self._collection_due(org, badge, n))]
        collected = asyncio.gather(*collections) if collections else None
        try:
            replies = await self.calls.call_many(self._reserve, calls)
        except BaseException:
            if collected is not None:  # the pipeline failed or we were cancelled: so are they
                collected.cancel()
                collected.add_done_callback(_retrieved)
            raise
        if collected is not None:
            await collected
        results: list[ReserveResult | Exception] = []
        for (org, badge, *_), (keys, args), reply in zip(items, calls, replies, strict=True):
            try:
                if isinstance(reply, BaseException):
                    raise reply
                if isinstance(reply, list) and reply and _text(reply[0]) == "KEYS":  # undeclared keys: again
                    reply = await self._declared(self._reserve, keys + [k for k in dict.fromkeys(
                        _text(k) for k in reply[1:]) if k not in keys], args)
                results.append(self._reserve_reply(org, badge, reply))
            except Exception as exc:
                results.append(exc)
        return results

    async def release(self, org: int, badge: str, request_id: str,
                      limits: Sequence[CounterRef] | None = None) -> str:
        """Give back an earn's counts, once: RELEASED; DONE when released before; NONE when no
        reservation is left and no `limits` were given. With `limits` (the earn's stored
        counters) it also gives back an earn whose reservation expired. Raises NeedsRebuild."""
        keys = [self.ready_key(org, badge), self.reservation_key(org, badge, request_id),
                self.released_key(org, badge, request_id), self.index_key(org, badge),
                self.lifetime_key(org, badge)]
        refs = list({ref.counter: ref for ref in limits or ()}.values())
        args: list[Any] = [request_id, self.memory(org, badge).floor, _score(self.released_ttl), len(refs)]
        for ref in refs:
            if ref.kind == "l":
                args += ["l", ref.counter]
            else:
                keys.append(self.counter_key(org, badge, ref.counter))
                args += [ref.kind, str(len(keys))]
        reply = await self._declared(self._release, keys, args)
        status = _text(reply[0])
        if status == "REBUILD":
            raise NeedsRebuild(badge, _text(reply[1]))
        self.observe(org, badge, int(reply[1]))
        return status

    async def release_restored(self, org: int, badge: str, request_id: str) -> str:
        """Give back the provisional reservation a rebuild restored for a refused earn
        (release_restored.lua): RELEASED, or NONE when there is none. Raises NeedsRebuild."""
        keys = [self.ready_key(org, badge), self.reservation_key(org, badge, request_id), self.index_key(org, badge),
                self.lifetime_key(org, badge)]
        reply = await self._declared(self._release_restored, keys, [request_id, self.memory(org, badge).floor])
        status = _text(reply[0])
        if status == "REBUILD":
            raise NeedsRebuild(badge, _text(reply[1]))
        self.observe(org, badge, int(reply[1]))
        return status

    # ---- rebuild (chunked): begin -> clear -> load... -> finish
    async def rebuild_begin(self, org: int, badge: str, token: str, *, force: bool = False) -> RebuildStart:
        reply = await self._begin(keys=[self.ready_key(org, badge), self.rebuild_lock_key(org, badge)],
                                  args=[token, self.lock_ttl_ms, self.memory(org, badge).floor, "1" if force else "0"])
        status = _text(reply[0])
        if status != "GO":
            return RebuildStart(status)
        return RebuildStart("GO", int(float(_text(reply[1]))), float(_text(reply[2])), float(_text(reply[3])))

    def next_generation(self, org: int, badge: str, start: RebuildStart, mark: int = 0) -> int:
        """Above every seq Redis, this process or the MongoDB watermark (`mark`) has seen."""
        return max(start.seq, self.memory(org, badge).floor, mark) // K.SEQ_GENERATION + 1

    async def rebuild_apply(self, org: int, badge: str, token: str, held: Iterable[HeldEarn], *,
                            start: RebuildStart, generation: int, now: float | None = None) -> RebuildResult:
        """Steps 2-4 with the lock of rebuild_begin: clear the old keys, load `held` (read from
        MongoDB after step 1) in chunks of at most `chunk` entries, publish."""
        clock = max(start.clock, start.server_time)
        if now is not None:
            clock = max(clock, min(now, start.server_time + self.max_ahead))
        earns = list(held)
        chunks = self._chunks(org, badge, earns, str(generation), clock)
        lock = [self.rebuild_lock_key(org, badge), self.index_key(org, badge), self.lifetime_key(org, badge)]
        batch: list[str] = []  # each clear call deletes the keys the previous one named
        while True:
            reply = await self._clear(keys=[*lock, *batch], args=[token, self.lock_ttl_ms, self.chunk])
            left = int(reply[0])
            if left < 0:
                raise LockLost(badge)
            if left == 0:
                break
            batch = [_text(k) for k in reply[1:]]
        largest = 0
        for chunk, size in chunks:
            largest = max(largest, size)
            named = dict.fromkeys(e[0] for kind in ("c", "z", "r", "t") for e in chunk[kind])
            if int(await self._load(keys=[*lock, *named], args=[token, self.lock_ttl_ms, json.dumps(chunk)])) < 0:
                raise LockLost(badge)
        seq = generation * K.SEQ_GENERATION
        done = await self._finish(keys=[self.rebuild_lock_key(org, badge), self.ready_key(org, badge),
                                        self.lifetime_key(org, badge), self.index_key(org, badge)],
                                  args=[token, str(generation), str(seq), _score(clock), self.idle_ttl])
        if not int(done):
            raise LockLost(badge)
        self.observe(org, badge, seq)
        return RebuildResult(True, sum(1 for e in earns if e.revoked_at is None), len(chunks), largest, generation)

    def expected(self, org: int, badge: str, earns: Iterable[HeldEarn], clock: float) -> Expected:
        """What the badge's counters hold when `earns` (from MongoDB) are counted, at this
        clock: only what the live windows need (docs/counters.md)."""
        out = Expected()
        for earn in earns:
            if earn.revoked_at is not None:
                out.revoked.append(earn)
                continue
            taken: list[list[str]] = []
            for ref in {r.counter: r for r in earn.limits}.values():
                if ref.kind == "l":
                    out.life[ref.counter] = out.life.get(ref.counter, 0) + 1
                    taken.append(["l", ref.counter])
                    continue
                key = self.counter_key(org, badge, ref.counter)
                if ref.kind == "c":
                    expires = (ref.end or 0.0) + self.retention
                    if expires > clock:
                        count, _ = out.counters.get(key, (0, expires))
                        out.counters[key] = (count + 1, expires)
                        taken.append(["c", key])
                else:
                    roll = ref.roll or 0.0
                    if earn.event_ts > clock - self.retention - roll:
                        entries, expires, _ = out.zsets.get(key, ([], 0.0, roll))
                        entries.append((earn.event_ts, earn.request_id))
                        out.zsets[key] = (entries, max(expires, earn.event_ts + roll + self.retention), roll)
                        taken.append(["z", key])
            if not earn.confirmed:  # counted, but its earn is not decided yet: it confirms itself or gives back
                out.reservations.append((earn.request_id, "provisional", taken, clock + self.reservation_ttl))
            elif earn.earned_on is not None and earn.earned_on + self.reservation_ttl > clock:
                # recent: a retry in flight still finds it taken (a retry never takes twice)
                out.reservations.append((earn.request_id, "held", taken, earn.earned_on + self.reservation_ttl))
        return out

    def _chunks(self, org: int, badge: str, earns: Sequence[HeldEarn], gen: str, clock: float
                ) -> list[tuple[dict[str, list[Any]], int]]:
        """The load calls of a rebuild, each of at most `chunk` entries."""
        state = self.expected(org, badge, earns, clock)
        horizon = time.time() - self.released_ttl
        items: list[tuple[str, list[Any]]] = [("l", [f, n]) for f, n in state.life.items()]
        items += [("c", [k, n, e]) for k, (n, e) in state.counters.items()]
        for key, (entries, expires, _) in state.zsets.items():
            items += [("z", [key, expires, [_score(ts), member]]) for ts, member in entries]
        items += [("r", [self.reservation_key(org, badge, rid), kind, gen, json.dumps(taken), rid, expires])
                  for rid, kind, taken, expires in state.reservations]
        # earns revoked lately: their release may still be on its way, and must find it done
        items += [("t", [self.released_key(org, badge, e.request_id), gen, clock + self.released_ttl])
                  for e in state.revoked if (e.revoked_at or 0.0) >= horizon]
        chunks: list[tuple[dict[str, list[Any]], int]] = []
        started: set[str] = set()
        for start in range(0, len(items), self.chunk):
            part: dict[str, list[Any]] = {"l": [], "c": [], "z": [], "r": [], "t": []}
            merged: dict[str, list[Any]] = {}
            for kind, entry in items[start:start + self.chunk]:
                if kind == "z":  # one [key, expires, [score, member, ...], fresh] per set and chunk
                    found = merged.get(entry[0])
                    if found is None:
                        fresh = 0 if entry[0] in started else 1
                        started.add(entry[0])
                        merged[entry[0]] = found = [entry[0], entry[1], [], fresh]
                        part["z"].append(found)
                    found[2] += entry[2]
                else:
                    part[kind].append(entry)
            chunks.append((part, len(items[start:start + self.chunk])))
        return chunks

    async def rebuild(self, org: int, badge: str, held: Iterable[HeldEarn], *, force: bool = False,
                      now: float | None = None, mark: int = 0) -> RebuildResult:
        """Load counts from the truth (begin, then apply); not applied when the counters are
        there and trusted, or another process is rebuilding them (callers wait and retry)."""
        token = uuid.uuid4().hex
        start = await self.rebuild_begin(org, badge, token, force=force)
        if start.status != "GO":
            return RebuildResult(False)
        try:
            return await self.rebuild_apply(org, badge, token, held, start=start, now=now,
                                            generation=self.next_generation(org, badge, start, mark))
        except BaseException:
            with contextlib.suppress(Exception):
                await self.unlock(self.rebuild_lock_key(org, badge), token)
            raise

    # ---- locks
    async def unlock(self, key: str, token: str) -> bool:
        return bool(await self._lock(keys=[key], args=[token, "release", 0]))

    @contextlib.asynccontextmanager
    async def keep_lock(self, key: str, token: str) -> AsyncIterator[None]:
        """Refresh a held lock in the background while a long step (a MongoDB read) runs."""
        async def refresh() -> None:
            while True:
                await asyncio.sleep(self.lock_ttl_ms / 3000)
                if not await self._lock(keys=[key], args=[token, "refresh", self.lock_ttl_ms]):
                    return

        task = asyncio.create_task(refresh())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    @contextlib.asynccontextmanager
    async def cold_lock(self, org: int, badge: str, timeout: float = 120.0) -> AsyncIterator[str]:
        """The badge's cold lock (one decider at a time for windows past the horizon), shared
        by every process; held while the body runs, kept alive by keep_lock."""
        mem = self.memory(org, badge)
        key, token = self.cold_lock_key(org, badge), uuid.uuid4().hex
        async with mem.cold_lock:
            deadline = time.monotonic() + timeout
            delay = 0.005
            while not await self.client.set(key, token, nx=True, px=self.lock_ttl_ms):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the cold lock of {org}:{badge} is held elsewhere")
                await asyncio.sleep(delay)
                delay = min(0.1, delay * 2)
            try:
                async with self.keep_lock(key, token):
                    yield token
            finally:
                with contextlib.suppress(Exception):
                    await self.unlock(key, token)

    # ---- reading the state (cold path, `counters check`)
    async def badge_state(self, org: int, badge: str) -> dict[str, str] | None:
        raw: dict[Any, Any] = await self.client.hgetall(self.ready_key(org, badge))
        return {_text(k): _text(v) for k, v in raw.items()} or None

    async def holding(self, org: int, badge: str, request_ids: Sequence[str]) -> set[str]:
        """Which of these earns hold a reservation of the current generation."""
        if not request_ids:
            return set()
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hget(self.ready_key(org, badge), "gen")
            for rid in request_ids:
                pipe.hmget(self.reservation_key(org, badge, rid), "state", "gen")
            replies = await pipe.execute()
        gen = replies[0]
        return {rid for rid, (state, g) in zip(request_ids, replies[1:], strict=True)
                if state is not None and g == gen}

    async def snapshot(self, org: int, badge: str) -> dict[str, Any]:
        """The badge's counters as Redis holds them: {life: {field: n}, c: {key: (n, expires)},
        z: {key: ([(score, member)], expires)}} (for `counters check`)."""
        life_raw: dict[Any, Any] = await self.client.hgetall(self.lifetime_key(org, badge))
        indexed: list[Any] = await self.client.zrange(self.index_key(org, badge), 0, -1, withscores=True)
        counter_base = self.counter_key(org, badge, "")
        keys = [(_text(k), float(score)) for k, score in indexed if _text(k).startswith(counter_base)]
        async with self.client.pipeline(transaction=False) as pipe:
            for key, _ in keys:
                pipe.type(key)
            types = [_text(t) for t in await pipe.execute()]
        async with self.client.pipeline(transaction=False) as pipe:
            for (key, _), kind in zip(keys, types, strict=True):
                if kind == "zset":
                    pipe.zrange(key, 0, -1, withscores=True)
                else:
                    pipe.get(key)
            values = await pipe.execute()
        out: dict[str, Any] = {"life": {_text(k): int(v) for k, v in life_raw.items()}, "c": {}, "z": {}}
        for (key, expires), kind, value in zip(keys, types, values, strict=True):
            if kind == "zset":
                out["z"][key] = ([(float(s), _text(m)) for m, s in value], expires)
            elif kind == "string":
                out["c"][key] = (int(value), expires)
        return out

    async def ping(self) -> bool:
        return bool(await self.client.ping())


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Read a background future's outcome, so that its error is not reported as never retrieved."""
    if not future.cancelled():
        future.exception()
