"""What the Lua scripts really touch, read off Redis's MONITOR stream.

Redis Cluster routes a script call by the keys it declares; a script that touches another
key works on one server and breaks (or silently touches the wrong node) on a cluster. The
audit opens a MONITOR connection to each server, lets a scenario run, and pairs every
EVALSHA with the commands its script ran (a script is atomic, so its commands follow its
own EVALSHA line). `COMMAND GETKEYS` names the keys of each of those commands, exactly as
the server's key specs do, so nothing here knows a command's syntax.

Shared by test_lua_keys.py (one server) and test_cluster_faults.py (the cluster stack).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from badge_worker.adapters import redis_store

LUA_DIR = Path(redis_store.__file__).parent / "lua"
_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|.)")
_SIMPLE = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}


def _unescape(raw: bytes) -> bytes:
    """Undo the quoting MONITOR applies to each argument (sdscatrepr)."""
    def one(m: re.Match[bytes]) -> bytes:
        code = m.group(1)
        if code.startswith(b"x") and len(code) == 3:
            return bytes([int(code[1:], 16)])
        return _SIMPLE.get(code, code)
    return _ESCAPE.sub(one, raw)


def parse_line(line: bytes) -> tuple[str, list[bytes]] | None:
    """('lua' | 'client', args) of one MONITOR line, None for anything else."""
    head, sep, rest = line.partition(b"] ")
    if not sep or b" [" not in head:
        return None
    source = "lua" if head.endswith(b" lua") else "client"
    return source, [_unescape(a) for a in _ARG.findall(rest)]


@dataclass
class ScriptCall:
    sha: str
    declared: list[str]
    touched: list[tuple[str, list[str]]] = field(default_factory=list)  # (command, its keys)


class KeyAudit:
    """MONITOR on each node while a scenario runs; `calls` pairs each EVALSHA with what its
    script did."""

    def __init__(self, nodes: list[tuple[str, int]]) -> None:
        self.nodes = nodes
        self.calls: list[ScriptCall] = []
        self._lines: list[list[tuple[str, list[bytes]]]] = [[] for _ in nodes]

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[KeyAudit]:
        streams = [await asyncio.open_connection(host, port) for host, port in self.nodes]
        readers: list[asyncio.Task[None]] = []
        try:
            for reader, writer in streams:
                writer.write(b"MONITOR\r\n")
                await writer.drain()
                assert (await reader.readline()).startswith(b"+OK")
            readers = [asyncio.create_task(self._read(reader, i)) for i, (reader, _) in enumerate(streams)]
            yield self
            # a marker on every node: once each stream shows it, it has shown all before it
            for host, port in self.nodes:
                client = Redis(host=host, port=port)
                await client.echo("key-audit-end")
                await client.aclose()
            await asyncio.wait_for(asyncio.gather(*readers), 60)
        finally:
            for task in readers:
                task.cancel()
            for _, writer in streams:
                writer.close()
        await self._pair()
        # an EVALSHA refused with NOSCRIPT (redis-py then loads the script and calls again)
        # ran nothing: only the calls whose script ran are calls
        self.calls = [c for c in self.calls if c.touched]

    async def _read(self, reader: asyncio.StreamReader, node: int) -> None:
        while True:
            line = await reader.readline()
            if not line:
                return
            parsed = parse_line(line.rstrip(b"\r\n"))
            if parsed is None:
                continue
            if parsed[0] == "client" and parsed[1][:2] == [b"ECHO", b"key-audit-end"]:
                return
            self._lines[node].append(parsed)

    async def _pair(self) -> None:
        for (host, port), lines in zip(self.nodes, self._lines, strict=True):
            client = Redis(host=host, port=port)
            client.set_response_callback("COMMAND", lambda reply, **_: reply)  # GETKEYS: a plain list
            try:
                current: ScriptCall | None = None
                for source, args in lines:
                    name = args[0].decode().upper() if args else ""
                    if source == "client":
                        current = None
                        if name == "EVALSHA":
                            count = int(args[2])
                            current = ScriptCall(args[1].decode(), [a.decode() for a in args[3:3 + count]])
                            self.calls.append(current)
                    elif current is not None:
                        current.touched.append((name, await _keys_of(client, args)))
            finally:
                await client.aclose()

    def undeclared(self) -> list[str]:
        """One line per command a script ran on a key its call did not declare."""
        found = []
        for call in self.calls:
            declared = set(call.declared)
            for command, keys in call.touched:
                extra = [k for k in keys if k not in declared]
                if extra:
                    found.append(f"{script_name(call.sha)}: {command} {extra} (declared {call.declared})")
        return found

    def scripts_run(self) -> set[str]:
        return {script_name(c.sha) for c in self.calls}


async def _keys_of(client: Redis, args: list[bytes]) -> list[str]:
    try:
        keys: Any = await client.execute_command("COMMAND", "GETKEYS", *args)
    except ResponseError:  # a command without key arguments (TIME, ...)
        return []
    return [k.decode() if isinstance(k, bytes) else str(k) for k in keys]


def _script_shas() -> dict[str, str]:
    import hashlib
    shas = {}
    for path in LUA_DIR.glob("*.lua"):
        if path.name == "common.lua":
            continue
        source = redis_store._lua(path.name)
        shas[hashlib.sha1(source.encode()).hexdigest()] = path.stem
    return shas


SHAS = _script_shas()


def script_name(sha: str) -> str:
    return SHAS.get(sha, sha)


def every_script() -> set[str]:
    return set(SHAS.values())


# ---- a scenario that runs every script, through every path that names extra keys

DAY = 86400.0


def _badge(org: int, badge_id: str, t0: float, *, weekly: bool) -> Any:
    from badge_worker.domain.models import BadgeDefinition
    constraints: list[dict[str, Any]] = [
        {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "maxEarnLimit": 50},
        {"constraintType": "BADGE_ROLLING_WINDOW", "rollType": "DAYS", "rollValue": 2, "maxEarnLimit": 60}]
    if weekly:  # a limit the badge had when an earn was recorded, gone since
        constraints.append({"constraintType": "BADGE_FIXED_WINDOW", "durationType": "WEEKS", "maxEarnLimit": 100})
    return BadgeDefinition.model_validate({
        "id": badge_id, "orgId": org, "startOn": t0 - 30 * DAY,
        "customerConstraints": [{"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 2}],
        "badgeConstraints": constraints})


async def exercise_every_script(store: redis_store.RedisStore, org: int, badge_id: str) -> dict[str, Any]:
    """Rebuild (several clear and load rounds), reserve (NEW, DUP, FULL, a provisional earn
    whose reservation lists a counter the call does not name, in a pipeline too), release
    (naming nothing, so the reservation's counters come back as KEYS), the release of a
    restored provisional reservation (KEYS too), the cold lock with a
    refresh, and a collection of keys whose time has come. Returns what it saw."""
    import time

    from badge_worker.domain.windows import limit_checks
    HeldEarn, CounterRef = redis_store.HeldEarn, redis_store.CounterRef
    store.chunk, store.gc_batch, store.gc_every, store.lock_ttl_ms = 3, 4, 2, 600
    store.max_ahead = 400 * DAY
    t0 = float(int(time.time()) - 3600)
    badge, before = _badge(org, badge_id, t0, weekly=False), _badge(org, badge_id, t0, weekly=True)

    def refs(b: Any, customer: int, t: float) -> list[Any]:
        return [CounterRef.of(c) for c in limit_checks(b, customer, t)]

    held = [HeldEarn(f"done{n}", t0 + n, refs(before, n, t0 + n), confirmed=True, earned_on=time.time())
            for n in range(5)]
    held.append(HeldEarn("pending", t0 + 10, refs(before, 9, t0 + 10), confirmed=False))
    held.append(HeldEarn("refused", t0 + 11, refs(before, 8, t0 + 11), confirmed=False))
    seen: dict[str, Any] = {"rebuild": await store.rebuild(org, badge_id, held)}
    assert seen["rebuild"].chunks > 1, "expected several load calls"
    seen["pending"] = await store.reserve(org, badge_id, "pending", t0 + 10, limit_checks(badge, 9, t0 + 10))
    for n in range(3):
        r = await store.reserve(org, badge_id, f"new{n}", t0 + 20, limit_checks(badge, 100, t0 + 20))
        seen.setdefault("new", []).append(r.status)
    seen["dup"] = (await store.reserve(org, badge_id, "new0", t0 + 20, limit_checks(badge, 100, t0 + 20))).detail
    many = await store.reserve_many([(org, badge_id, f"m{n}", t0 + 30, limit_checks(badge, 200 + n, t0 + 30), None)
                                     for n in range(6)])
    seen["many"] = [getattr(r, "status", "REBUILD") for r in many]
    seen["release"] = await store.release(org, badge_id, "new0")
    seen["release_again"] = await store.release(org, badge_id, "new0")
    seen["release_stored"] = await store.release(org, badge_id, "done1", refs(before, 1, t0 + 1))
    # a provisional earn refused before the rebuild: its reservation's counters come back as KEYS
    seen["restored"] = await store.release_restored(org, badge_id, "refused")
    seen["restored_again"] = await store.release_restored(org, badge_id, "refused")
    async with store.cold_lock(org, badge_id) as token:
        await asyncio.sleep(0.5)  # the lock is refreshed meanwhile (lock_ttl_ms / 3)
        seen["cold"] = (await store.reserve(org, badge_id, "cold", t0 + 40, limit_checks(badge, 300, t0 + 40),
                                            cold_token=token)).status
    # 40 days on: the windows of t0 and their reservations are due; a collection deletes them
    later = time.time() + 40 * DAY
    for n in range(4):
        await store.reserve(org, badge_id, f"late{n}", later, limit_checks(badge, 400 + n, later), now=later)
    old_window = store.counter_key(org, badge_id, limit_checks(badge, 100, t0 + 20)[1].counter)
    seen["old_window_before"] = await store.client.exists(old_window)
    await store.collect(org, badge_id)
    seen["old_window_after"] = await store.client.exists(old_window)
    seen["forced"] = await store.rebuild(org, badge_id, held[:2], force=True)
    return seen
