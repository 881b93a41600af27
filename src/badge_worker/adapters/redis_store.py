"""Redis: requestId dedupe cache and the atomic limit counters (Lua scripts in lua/)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from badge_worker import constants as K
from badge_worker.domain.windows import CheckKind, LimitCheck


def _lua(name: str) -> str:
    return resources.files("badge_worker.adapters").joinpath("lua", name).read_text(encoding="utf-8")


def _score(ts: float) -> str:
    return repr(float(ts))


@dataclass(frozen=True)
class ReserveResult:
    status: str  # OK | FULL
    detail: str = ""  # NEW | DUP | CONFIRMED for OK
    index: int = -1  # FULL: which check (0-based)
    count: int = 0
    blocking_event: float | None = None


@dataclass(frozen=True)
class HeldEarn:
    """An earn that counts towards the limits, as recorded in MongoDB (for a rebuild)."""

    request_id: str
    event_ts: float
    limits: Sequence[tuple[str, str]]  # (kind 'c'|'z', counter name)
    confirmed: bool  # ACTIVE (True) or PENDING (False, provisional)


class NeedsRebuild(Exception):
    """The badge's counters are not in Redis (first use, or Redis lost its data)."""


class RedisStore:
    def __init__(self, client: Redis, prefix: str = K.KEY_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._reserve: AsyncScript = client.register_script(_lua("reserve.lua"))
        self._release: AsyncScript = client.register_script(_lua("release.lua"))
        self._rebuild: AsyncScript = client.register_script(_lua("rebuild.lua"))

    # ---- keys
    def ready_key(self, org: int, badge: str) -> str:
        return K.READY_KEY.format(prefix=self.prefix, org=org, badge=badge)

    def counter_key(self, org: int, badge: str, counter: str) -> str:
        return K.COUNTER_KEY.format(prefix=self.prefix, org=org, badge=badge, counter=counter)

    def reservation_key(self, org: int, badge: str, request_id: str) -> str:
        return K.RESERVATION_KEY.format(prefix=self.prefix, org=org, badge=badge, request_id=request_id)

    def request_key(self, org: int, request_id: str) -> str:
        return K.REQUEST_KEY.format(prefix=self.prefix, org=org, request_id=request_id)

    # ---- requestId dedupe (a cache in front of the MongoDB ledger)
    async def claim_request(self, org: int, request_id: str, origin: str) -> str | None:
        """Record `origin` as the first user of requestId; return the origin already recorded, if other."""
        key = self.request_key(org, request_id)
        if await self.client.set(key, origin, nx=True, ex=K.REQUEST_TTL_SECONDS):
            return None
        existing = await self.client.get(key)
        if existing is None:  # expired in between: take it now
            await self.client.set(key, origin, ex=K.REQUEST_TTL_SECONDS)
            return None
        text = existing.decode() if isinstance(existing, bytes) else str(existing)
        return None if text == origin else text

    # ---- limits
    async def reserve(self, org: int, badge: str, request_id: str, event_ts: float,
                      checks: Sequence[LimitCheck]) -> ReserveResult:
        keys = [self.ready_key(org, badge), self.reservation_key(org, badge, request_id)]
        args: list[Any] = [_score(event_ts), request_id, len(checks)]
        for check in checks:
            keys.append(self.counter_key(org, badge, check.counter))
            kind = "z" if check.kind is CheckKind.ROLLING else "c"
            lo = _score(check.window_start) if check.kind is CheckKind.ROLLING and check.window_start else "-inf"
            args += [kind, check.limit, lo]
        reply = await self._reserve(keys=keys, args=args)
        status = _text(reply[0])
        if status == "REBUILD":
            raise NeedsRebuild(badge)
        if status == "OK":
            return ReserveResult("OK", _text(reply[1]))
        blocking = float(_text(reply[3])) if reply[3] else None
        return ReserveResult("FULL", index=int(reply[1]) - 1, count=int(reply[2]), blocking_event=blocking)

    async def release(self, org: int, badge: str, request_id: str) -> str:
        """Give back an earn's counts; NONE when nothing was held, REBUILD when counters are gone."""
        reply = await self._release(keys=[self.ready_key(org, badge),
                                          self.reservation_key(org, badge, request_id)])
        return _text(reply[0])

    async def rebuild(self, org: int, badge: str, held: Iterable[HeldEarn]) -> bool:
        """Load counts from the truth; False when another worker's rebuild was applied first."""
        counters: dict[str, int] = {}
        zsets: dict[str, list[list[str]]] = {}
        reservations: dict[str, dict[str, str]] = {}
        for earn in held:
            taken = []
            for kind, counter in earn.limits:
                key = self.counter_key(org, badge, counter)
                if kind == "c":
                    counters[key] = counters.get(key, 0) + 1
                else:
                    zsets.setdefault(key, []).append([_score(earn.event_ts), earn.request_id])
                taken.append([kind, key])
            if taken:
                reservations[self.reservation_key(org, badge, earn.request_id)] = {
                    "state": "held" if earn.confirmed else "provisional",
                    "keys": json.dumps(taken),
                    "member": earn.request_id,
                }
        payload = json.dumps({"counters": counters, "zsets": zsets, "reservations": reservations})
        return bool(await self._rebuild(keys=[self.ready_key(org, badge)], args=[payload]))

    async def ping(self) -> bool:
        return bool(await self.client.ping())


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
