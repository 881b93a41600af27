"""adapters/redis_pipe.py against the real Redis: the same replies as redis-py's pipelines,
error replies in place, and a connection never reused with replies left unread."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from badge_worker.adapters import redis_pipe
from badge_worker.settings import Settings

pytestmark = pytest.mark.asyncio


def _pipe(client: Redis, timeout: float = 10.0, retries: int | None = None) -> redis_pipe.RawPipeline:
    pipe = redis_pipe.for_client(client, timeout)
    assert pipe is not None
    if retries is not None:  # the connections' own retry policy, as Redis(retry=...) would set it
        pipe.pool.connection_kwargs["retry"] = Retry(NoBackoff(), retries)
    return pipe


async def test_replies_match_redis_py_pipelines(redis_client: Redis, settings: Settings) -> None:
    if redis_pipe.for_client(redis_client) is None:
        pytest.skip("a Redis Cluster client has no raw pipeline: redis-py's cluster pipeline serves it")
    key = f"{settings.redis_key_prefix}:pipe:{uuid.uuid4().hex}"
    pipe = _pipe(redis_client)
    sha = await redis_client.script_load("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) * 2}")
    try:
        replies = await pipe.execute([
            ("SET", key + ":a", "first", "NX", "EX", 60, "GET"),
            ("SET", key + ":a", "second", "NX", "EX", 60, "GET"),  # kept the first, answers it
            ("SET", key + ":list", 1.5),
            ("LPUSH", key + ":list", "x"),  # WRONGTYPE: this command's error, in its place
            ("MGET", key + ":a", key + ":missing", key + ":list"),
            ("EVALSHA", sha, 1, key, "arg", 21),
            ("EVALSHA", "0" * 40, 0),  # an unknown script
            ("PEXPIRE", key + ":a", 60_000),
        ])
        assert replies[0] is None and replies[1] == b"first" and replies[2] == b"OK"
        assert isinstance(replies[3], ResponseError) and "WRONGTYPE" in str(replies[3])
        assert replies[4] == [b"first", None, b"1.5"]
        assert replies[5] == [key.encode(), b"arg", 42]
        assert isinstance(replies[6], NoScriptError)
        assert replies[7] == 1
        assert await pipe.execute([]) == []
    finally:
        await redis_client.delete(key + ":a", key + ":list")
        await pipe.aclose()


async def test_a_timed_out_or_cancelled_pipeline_never_leaves_its_replies_to_the_next(
        redis_client: Redis, settings: Settings) -> None:
    if redis_pipe.for_client(redis_client) is None:
        pytest.skip("a Redis Cluster client has no raw pipeline: redis-py's cluster pipeline serves it")
    key = f"{settings.redis_key_prefix}:pipe:{uuid.uuid4().hex}"
    pipe = _pipe(redis_client, timeout=0.3, retries=0)
    pipe.pool.max_connections = 1  # the next pipeline gets the same connection, or a fresh one
    try:
        with pytest.raises(RedisTimeout):
            await pipe.execute([("BLPOP", key, 2)])  # blocks past the pipeline's timeout
        await redis_client.rpush(key, "late")  # what the BLPOP would have answered
        assert await pipe.execute([("ECHO", "after-timeout")]) == [b"after-timeout"]
        assert await redis_client.lrange(key, 0, -1) == [b"late"]  # the dropped BLPOP took nothing

        await redis_client.delete(key)
        waiting = asyncio.create_task(pipe.execute([("BLPOP", key, 2), ("ECHO", "never")]))
        await asyncio.sleep(0.1)
        waiting.cancel()  # a revoked batch
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await redis_client.rpush(key, "late")
        assert await pipe.execute([("ECHO", "after-cancel")]) == [b"after-cancel"]
    finally:
        await redis_client.delete(key)
        await pipe.aclose()


async def test_a_connection_killed_between_pipelines_is_replaced_by_the_retry(
        redis_client: Redis, settings: Settings) -> None:
    if redis_pipe.for_client(redis_client) is None:
        pytest.skip("a Redis Cluster client has no raw pipeline: redis-py's cluster pipeline serves it")
    pipe = _pipe(redis_client, retries=1)
    pipe.pool.max_connections = 1
    name = f"pipe{uuid.uuid4().hex[:12]}"
    try:
        assert await pipe.execute([("CLIENT", "SETNAME", name)]) == [b"OK"]
        clients = await redis_client.client_list()
        ours = [c for c in clients if c.get("name") == name]
        assert len(ours) == 1
        await redis_client.execute_command("CLIENT", "KILL", "ID", ours[0]["id"])
        # the pooled connection is dead; the retry reconnects and the pipeline answers
        assert await pipe.execute([("ECHO", "again")]) == [b"again"]
    finally:
        await pipe.aclose()
