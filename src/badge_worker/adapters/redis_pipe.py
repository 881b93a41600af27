"""Pipelines of raw commands to one Redis server, for the hot path's three pipelines
(the requestId cache's claim and remember, the batched Lua calls).

redis-py's Pipeline costs more Python than the commands: per command a stack entry, an
argument encoder called on every argument, and per reply an `asyncio.timeout` (a timer
armed and cancelled) when the pool has a socket timeout. In a py-spy profile of the
accept-heavy drain (2026-12-05) packing was ~8% of the worker's samples and the per-reply
timers ~5%. Here each command is packed by hiredis in one C call, and one timeout covers a
whole pipeline, on a pool of its own without a per-read timeout.

Replies come back raw (no response callbacks): bytes, ints, lists, None; an error reply is
returned in its place as its ResponseError (NoScriptError for an unknown script), as
redis-py's `execute(raise_on_error=False)` does. A connection or timeout error fails the
whole pipeline and is retried by the connection's own Retry policy on a fresh connection,
as redis-py's Pipeline retries it. A Redis Cluster client has no RawPipeline (`for_client`
returns None): its callers keep redis-py's cluster pipeline, which routes by slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

Command = Sequence[str | bytes | int | float]


class RawPipeline:
    def __init__(self, pool: BlockingConnectionPool, timeout: float = 10.0) -> None:
        self.pool, self.timeout = pool, timeout

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Every command's reply (or its error reply), in order; one write, one round trip."""
        if not commands:
            return []
        packed = [hiredis.pack_command(tuple(command)) for command in commands]  # type: ignore[arg-type]
        conn = await self.pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            replies: list[Any] = await conn.retry.call_with_retry(
                lambda: self._exchange(conn, packed), lambda _error: self._drop(conn))
            return replies
        finally:
            await self.pool.release(conn)

    async def _exchange(self, conn: AbstractConnection, packed: list[bytes]) -> list[Any]:
        replies: list[Any] = []
        done = False
        try:
            async with asyncio.timeout(self.timeout):
                await conn.send_packed_command(packed)
                for _ in packed:
                    try:
                        replies.append(await conn.read_response())
                    except ResponseError as exc:  # this command's own error: the rest still reply
                        replies.append(exc)
            done = True
        except TimeoutError:
            raise RedisTimeout(f"no reply to a pipeline of {len(packed)} within {self.timeout} s") from None
        finally:
            if not done:  # replies may be left unread (an error, a timeout, a cancelled caller)
                await self._drop(conn)
        return replies

    @staticmethod
    async def _drop(conn: AbstractConnection) -> None:
        await conn.disconnect(nowait=True)

    async def aclose(self) -> None:
        await self.pool.disconnect()


def for_client(client: Any, timeout: float = 10.0) -> RawPipeline | None:
    """A RawPipeline on its own pool, made from a single-server client's pool settings (the
    same server, credentials, TLS, size); None for a Redis Cluster client."""
    if not isinstance(client, Redis):
        return None
    source = client.connection_pool
    kwargs = {**source.connection_kwargs, "socket_timeout": None}
    pool = BlockingConnectionPool(connection_class=source.connection_class,
                                  max_connections=source.max_connections, timeout=30, **kwargs)
    return RawPipeline(pool, timeout)
