"""Redis in front of the MongoDB requestId ledger: who used each requestId first, and the
outcome it got, so that a redelivered message is answered without reading MongoDB.

- `{prefix}:req:{org}:{requestId}` = origin ("topic/partition/offset") of the first message,
  kept REQUEST_TTL_SECONDS (the ledger is the truth beyond that);
- `{prefix}:out:{org}:{requestId}` = that message's outcome (JSON), kept OUTCOME_CACHE_TTL_S:
  long enough for the redeliveries of a crash or a rebalance, short enough to stay small.

Both are a cache: a miss sends the caller to the ledger, never to a different answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from badge_worker import constants as K
from badge_worker.adapters import json_text
from badge_worker.adapters.redis_pipe import RawPipeline


@dataclass(frozen=True)
class RequestClaim:
    first_origin: str | None  # None: this message is the first to use the requestId (per the cache)
    outcome: dict[str, Any] | None  # the first message's outcome, when cached
    seen: bool = False  # the cache knew the requestId already (from this message or another)

    @property
    def resuming(self) -> bool:
        """This same message was seen before and its outcome is not cached: it was in flight."""
        return self.seen and self.first_origin is None and self.outcome is None


class RequestCache:
    def __init__(self, client: Redis, prefix: str = K.KEY_PREFIX, outcome_ttl: float = 600.0,
                 pipe: RawPipeline | None = None) -> None:
        self.client, self.prefix, self.outcome_ttl = client, prefix, outcome_ttl
        self.cluster = isinstance(client, RedisCluster)
        self.pipe = pipe  # one server: the claim and remember pipelines go raw (redis_pipe.py)

    def request_key(self, org: int, request_id: str) -> str:
        return K.REQUEST_KEY.format(prefix=self.prefix, org=org, request_id=request_id)

    def outcome_key(self, org: int, request_id: str) -> str:
        return K.OUTCOME_KEY.format(prefix=self.prefix, org=org, request_id=request_id)

    async def claim(self, org: int, request_id: str, origin: str) -> RequestClaim:
        """Record `origin` as the first user of requestId unless one is recorded; one round trip."""
        return (await self.claim_many([(org, request_id, origin)]))[0]

    async def claim_many(self, items: list[tuple[int, str, str]]) -> list[RequestClaim]:
        """`claim` for a whole batch (orgId, requestId, origin), in one round trip."""
        if not items:
            return []
        outcome_keys = [self.outcome_key(org, request_id) for org, request_id, _ in items]
        if self.pipe is not None:
            commands: list[tuple[str | int, ...]] = [
                ("SET", self.request_key(org, request_id), origin, "NX", "EX", K.REQUEST_TTL_SECONDS, "GET")
                for org, request_id, origin in items]
            commands.append(("MGET", *outcome_keys))
            replies = _raised(await self.pipe.execute(commands))
            return [_claim(origin, replies[i], replies[-1][i]) for i, (_, _, origin) in enumerate(items)]
        async with self.client.pipeline(transaction=False) as pipe:
            for org, request_id, origin in items:
                pipe.set(self.request_key(org, request_id), origin, nx=True, ex=K.REQUEST_TTL_SECONDS, get=True)
            if self.cluster:  # keys of many slots: one GET each, sent by the client to their nodes
                for key in outcome_keys:
                    pipe.get(key)
            else:  # one MGET for every cached outcome: a reply per key costs redis-py more than the key
                pipe.mget(outcome_keys)
            replies = await pipe.execute()
        outcomes = replies[len(items):] if self.cluster else replies[-1]
        return [_claim(origin, replies[i], outcomes[i]) for i, (_, _, origin) in enumerate(items)]

    async def correct(self, org: int, request_id: str, origin: str) -> None:
        """Put the ledger's answer back where the cache had another one (after a data loss)."""
        await self.client.set(self.request_key(org, request_id), origin, ex=K.REQUEST_TTL_SECONDS)

    async def remember(self, items: Iterable[tuple[int, str, dict[str, Any]]]) -> None:
        """Cache the outcomes of a batch (orgId, requestId, outcome), before they are committed."""
        if self.outcome_ttl <= 0:
            return
        ttl_ms = int(self.outcome_ttl * 1000)
        if self.pipe is not None:
            _raised(await self.pipe.execute([
                ("SET", self.outcome_key(org, request_id), json_text.dumps(outcome), "PX", ttl_ms)
                for org, request_id, outcome in items]))
            return
        async with self.client.pipeline(transaction=False) as pipe:
            count = 0
            for org, request_id, outcome in items:
                pipe.set(self.outcome_key(org, request_id), json_text.dumps(outcome), px=ttl_ms)
                count += 1
            if count:
                await pipe.execute()


def _raised(replies: list[Any]) -> list[Any]:
    """The replies, or the first error reply raised (as redis-py's pipelines do by default)."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _claim(origin: str, previous: Any, cached: Any) -> RequestClaim:
    if previous is None:
        return RequestClaim(None, None)
    first = previous.decode("utf-8", "replace") if isinstance(previous, bytes) else str(previous)
    outcome = None
    if cached is not None and first == origin:
        try:
            outcome = orjson.loads(cached)
        except ValueError:  # not ours to trust: the ledger answers instead
            outcome = None
    return RequestClaim(None if first == origin else first, outcome if isinstance(outcome, dict) else None,
                        seen=True)
