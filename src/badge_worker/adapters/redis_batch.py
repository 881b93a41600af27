"""Group commit for Lua calls: the EVALSHAs asked for in one event-loop tick go out as one
pipeline (one write, one round trip, one pooled connection).

A partition batch runs hundreds of commands at once, and they reach their reserve step
together (they all wait for the same batched MongoDB insert just before it). Sent one by one,
each call took a pooled connection, a write and a read of its own: the reserve step was ~18%
of the worker's CPU in a profile of the drain. The calls of one tick come from different
entities (the commands of one customer run one after the other), so their order in the
pipeline is as arbitrary as their order on separate connections was.

Each caller gets its own reply or its own error; a connection error fails every call of the
pipeline, as it would have failed each of them. NOSCRIPT (Redis restarted or flushed its
script cache) loads the script and sends the calls again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from badge_worker.adapters.redis_pipe import RawPipeline


class _Call:
    """One queued EVALSHA and its caller's future (a slotted class: see mongo_batch._Op)."""

    __slots__ = ("args", "done", "keys", "script")

    def __init__(self, script: AsyncScript, keys: list[Any], args: list[Any],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.script, self.keys, self.args = script, keys, args
        self.done: asyncio.Future[Any] = loop.create_future()


class ScriptBatcher:
    def __init__(self, client: Redis, max_batch: int = 1000, raw: RawPipeline | None = None) -> None:
        self.client, self.max_batch = client, max_batch
        self.raw = raw  # one server: raw pipelines (redis_pipe.py); a cluster: redis-py's, routed by slot
        self._queue: list[_Call] = []
        self._flusher: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[None] | None = None  # the batch being sent
        self.cancel_wait = 3.0  # seconds a cancelled caller waits for its call in flight

    async def call(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
        call = _Call(script, keys, args, asyncio.get_running_loop())
        self._enqueue([call])
        try:
            return await call.done  # cancelled with its caller; the flusher then leaves it alone
        except asyncio.CancelledError:
            await self._cancelled([call])
            raise

    async def call_many(self, script: AsyncScript, calls: Sequence[tuple[list[Any], list[Any]]]) -> list[Any]:
        """`script` once per (keys, args), queued together in this order (one pipeline when
        they fit in one batch): each call's reply, or its own error as the value."""
        loop = asyncio.get_running_loop()
        queued = [_Call(script, keys, args, loop) for keys, args in calls]
        self._enqueue(queued)
        try:
            return list(await asyncio.gather(*(c.done for c in queued), return_exceptions=True))
        except asyncio.CancelledError:
            await self._cancelled(queued)
            raise

    def _enqueue(self, calls: list[_Call]) -> None:
        self._queue.extend(calls)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_all())

    async def _cancelled(self, calls: list[_Call]) -> None:
        mine = {id(c) for c in calls}
        queued = len(self._queue)
        self._queue = [c for c in self._queue if id(c) not in mine]  # not taken: never sent
        for call in calls:
            if not call.done.done():
                call.done.cancel()
        inflight = self._inflight
        if len(self._queue) - queued + len(calls) > 0 and inflight is not None and not inflight.done():
            # some were taken into the batch in flight: they may still run, so wait for that
            # (briefly), so that nothing of a revoked batch runs after the revoke
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(inflight), self.cancel_wait)

    async def _flush_all(self) -> None:
        await asyncio.sleep(0)  # let the commands running in this tick queue their calls too
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            try:
                await self._send(batch)
            except BaseException as exc:
                for call in batch:
                    _resolve(call, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise

    async def _send(self, batch: list[_Call]) -> None:
        for attempt in range(2):
            batch = [c for c in batch if not c.done.done()]  # callers cancelled meanwhile
            if not batch:
                return
            if self.raw is not None:
                replies = await self.raw.execute(
                    [("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args) for call in batch])
            else:
                async with self.client.pipeline(transaction=False) as pipe:
                    for call in batch:
                        # execute_command, not pipe.evalsha: redis-py's cluster pipeline refuses the
                        # latter by name, while it routes the raw command by its KEYS like any other
                        pipe.execute_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
                    replies = await pipe.execute(raise_on_error=False)
            missing: list[_Call] = []
            for call, reply in zip(batch, replies, strict=True):
                if isinstance(reply, NoScriptError) and attempt == 0:
                    missing.append(call)
                else:  # a reply, or this call's own error (a ResponseError)
                    _resolve(call, reply)
            if not missing:
                return
            for script in {id(c.script): c.script for c in missing}.values():
                await self.client.script_load(script.script)
            batch = missing


def _resolve(call: _Call, outcome: Any) -> None:
    if call.done.done():
        return
    if isinstance(outcome, BaseException):
        call.done.set_exception(outcome)
        with contextlib.suppress(BaseException):
            call.done.exception()  # a caller cancelled meanwhile never reads it
    else:
        call.done.set_result(outcome)
