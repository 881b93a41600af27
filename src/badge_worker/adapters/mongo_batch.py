"""Group commit for MongoDB writes.

Many commands are processed at once and each writes a few single documents. Sent one by
one and concurrently, they cost a round trip each. Here every write of a process goes
through one queue: the inserts queued meanwhile go out as one `insert_many(ordered=False)`
per collection, each caller getting its own result (DuplicateKeyError included); updates,
always by `_id`, go one at a time (measured on FerretDB 1.24: ~1 ms each, whereas one bulk
of 200 updates took over a minute and held the writer all along). One bad document never
fails another's write: a batch refused as a whole (a document the driver cannot encode, a
command error) is sent again one document at a time, so that only the bad one fails.

A few flushes run at once, and one flush writes its collections side by side: with a single
serial flusher every stage of a batch (ledger, intents, earned badges, outcomes) first waited
for whatever flush was in flight, ~half the latency at 1,000 earns/s. A store with one writer
(FerretDB on SQLite: SQLITE_BUSY) gets one flush at a time, collections one after another,
from its first lock error on.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from contextlib import AbstractAsyncContextManager
from typing import Any

import structlog
from bson.errors import InvalidDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import (
    BulkWriteError,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    WriteConcernError,
    WriteError,
)

Doc = dict[str, Any]

log = structlog.get_logger("badge_worker.mongo")

TRANSIENT_MARKERS = ("database is locked", "SQLITE_BUSY", "database table is locked")
# Raised by the driver while encoding a document, before anything is sent: a str with a lone
# surrogate (UnicodeEncodeError), an int beyond int64 (OverflowError), a type BSON lacks or a
# document over 16 MB (InvalidDocument, DocumentTooLarge).
ENCODING_ERRORS: tuple[type[Exception], ...] = (InvalidDocument, OverflowError, ValueError, TypeError)


def is_transient_write_error(message: str) -> bool:
    return any(marker in message for marker in TRANSIENT_MARKERS)


class _Op:
    """One queued write and its caller's future. A plain slotted class: as a dataclass with a
    default factory, its __init__ (the future included) was ~4% of the worker's samples."""

    __slots__ = ("collection", "doc", "done", "flt", "update")

    def __init__(self, collection: AsyncCollection[Doc], loop: asyncio.AbstractEventLoop, doc: Doc | None = None,
                 flt: Doc | None = None, update: Doc | None = None) -> None:
        self.collection = collection
        self.doc = doc  # an insert
        self.flt, self.update = flt, update  # or an update
        self.done: asyncio.Future[None] = loop.create_future()


class WriteBatcher:
    def __init__(self, max_batch: int = 1000, retries: int = 8, flushes: int = 4) -> None:
        self.max_batch, self.retries = max_batch, retries
        self.flushes = max(1, flushes)  # flushes in flight at once; 1 = one writer
        self._queue: list[_Op] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._starting = False  # a flusher is started and has not taken its batch yet
        self._inflight: set[asyncio.Future[None]] = set()  # the batches being written
        self.cancel_wait = 3.0  # seconds a cancelled caller waits for its write in flight
        self.lock = asyncio.Lock()  # one writer: taken by each flush and the writes that bypass the queue

    async def insert(self, collection: AsyncCollection[Doc], doc: Doc) -> None:
        await self._wait(_Op(collection, asyncio.get_running_loop(), doc=doc))

    async def insert_each(self, collection: AsyncCollection[Doc], docs: list[Doc]) -> list[BaseException | None]:
        """Insert every document of `docs` (queued together); each one's error, or None."""
        loop = asyncio.get_running_loop()
        ops = [_Op(collection, loop, doc=doc) for doc in docs]
        self._queue.extend(ops)
        self._kick()
        try:
            return list(await asyncio.gather(*(op.done for op in ops), return_exceptions=True))
        except asyncio.CancelledError:
            await self._cancelled(ops)
            raise

    async def update(self, collection: AsyncCollection[Doc], flt: Doc, update: Doc) -> None:
        await self._wait(_Op(collection, asyncio.get_running_loop(), flt=flt, update=update))

    def _kick(self) -> None:
        # A flusher that has not taken its batch yet will take this op too; otherwise one more
        # flusher, up to the limit (a busy one takes what is queued when its flush ends).
        if self._starting or len(self._flushers) >= self.flushes:
            return
        self._starting = True
        task = asyncio.create_task(self._flush_all())
        self._flushers.add(task)

    async def _wait(self, op: _Op) -> None:
        # The op's own future, awaited as is (a shield per write cost ~3% of the worker's CPU):
        # a cancelled caller cancels it, and the flusher leaves a cancelled op's result alone.
        self._queue.append(op)
        self._kick()
        try:
            await op.done
        except asyncio.CancelledError:
            await self._cancelled([op])
            raise

    async def _cancelled(self, ops: list[_Op]) -> None:
        """Cancelled (a revoke): writes not sent yet never will be; a write already sent still
        lands, so wait for it (briefly) before giving up, so that nothing of a revoked batch
        lands after the revoke."""
        mine = {id(op) for op in ops}
        queued = len(self._queue)
        self._queue = [o for o in self._queue if id(o) not in mine]
        sent = len(ops) - (queued - len(self._queue))
        for op in ops:
            if not op.done.done():
                op.done.cancel()
        inflight = list(self._inflight)
        if sent and inflight:
            with contextlib.suppress(BaseException):
                await asyncio.wait(inflight, timeout=self.cancel_wait)

    async def _flush_all(self) -> None:
        started = False
        try:
            await asyncio.sleep(0)  # let the commands running in this tick queue their writes too
            self._starting, started = False, True
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                if self._queue:
                    self._kick()  # more than one batch queued: the next one need not wait for this
                flight: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._inflight.add(flight)
                try:
                    await self._flush(batch)
                finally:
                    flight.set_result(None)
                    self._inflight.discard(flight)
        finally:
            # here, not in a done callback: an op queued after this task's last look at the
            # queue must find room for a new flusher
            if not started:  # cancelled before taking a batch
                self._starting = False
            self._flushers.discard(asyncio.current_task())

    async def _flush(self, batch: list[_Op]) -> None:
        one_writer = self.flushes == 1
        guard: AbstractAsyncContextManager[Any] = self.lock if one_writer else contextlib.nullcontext()
        async with guard:
            batch = [op for op in batch if not op.done.done()]  # callers cancelled meanwhile
            inserts: dict[str, list[_Op]] = {}
            for op in batch:
                if op.doc is not None:
                    inserts.setdefault(op.collection.name, []).append(op)
            if one_writer or len(inserts) < 2:
                for ops in inserts.values():
                    await self._with_retries(self._insert_many, ops)
            else:
                await asyncio.gather(*(self._with_retries(self._insert_many, ops) for ops in inserts.values()))
            for op in batch:
                if op.doc is None:
                    await self._with_retries(self._update_one, [op])

    def _one_writer(self, message: str) -> None:
        """The store refused a concurrent write for its lock: one flush at a time from now on."""
        if self.flushes > 1:
            self.flushes = 1
            log.info("mongodb_one_writer", reason=message[:200])

    async def _with_retries(self, write: Any, ops: list[_Op]) -> None:
        pending = ops
        for attempt in range(self.retries + 1):
            try:
                pending = await write(pending, last=attempt == self.retries)
            except Exception as exc:  # connection errors and the like: every caller sees it
                for op in pending:
                    _resolve(op, exc)
                return
            if not pending:
                return
            await asyncio.sleep(min(0.5, 0.01 * 2**attempt) * (0.5 + random.random()))

    async def _insert_many(self, ops: list[_Op], last: bool) -> list[_Op]:
        """Insert; resolve each op; return the ones to try again (SQLite busy)."""
        try:
            await ops[0].collection.insert_many([op.doc for op in ops], ordered=False)  # type: ignore[misc]
        except BulkWriteError as exc:
            retry: list[_Op] = []
            failed = {err["index"]: err for err in exc.details.get("writeErrors", [])}
            for index, op in enumerate(ops):
                err = failed.get(index)
                if err is None:
                    _resolve(op, None)
                elif err.get("code") == 11000:
                    _resolve(op, DuplicateKeyError(err.get("errmsg", "duplicate key"), 11000, err))
                elif is_transient_write_error(str(err.get("errmsg"))) and not last:
                    self._one_writer(str(err.get("errmsg")))
                    retry.append(op)
                else:
                    _resolve(op, WriteError(err.get("errmsg", "write failed"), err.get("code"), err))
            return retry
        except OperationFailure as exc:
            if is_transient_write_error(str(exc)) and not last:
                self._one_writer(str(exc))
                return ops
            if len(ops) > 1 and not isinstance(exc, WriteConcernError | ExecutionTimeout):
                return await self._insert_each(ops, last)  # refused as a whole: find the one to blame
            raise
        except ENCODING_ERRORS:
            if len(ops) > 1:  # a document the driver cannot encode: send them one by one
                return await self._insert_each(ops, last)
            raise
        for op in ops:
            _resolve(op, None)
        return []

    async def _insert_each(self, ops: list[_Op], last: bool) -> list[_Op]:
        """Insert the documents of a batch that failed as a whole one at a time, so that only
        the bad one gets the error. Connection errors still fail every op not resolved yet."""
        retry: list[_Op] = []
        for op in ops:
            try:
                retry += await self._insert_many([op], last)
            except (InvalidDocument, OverflowError, ValueError, TypeError, OperationFailure) as exc:
                if isinstance(exc, WriteConcernError | ExecutionTimeout):
                    raise
                _resolve(op, exc)
        return retry

    async def _update_one(self, ops: list[_Op], last: bool) -> list[_Op]:
        (op,) = ops
        try:
            await op.collection.update_one(op.flt or {}, op.update or {})
        except OperationFailure as exc:
            if is_transient_write_error(str(exc)) and not last:
                self._one_writer(str(exc))
                return ops
            raise
        _resolve(op, None)
        return []


def _resolve(op: _Op, error: BaseException | None) -> None:
    if op.done.done():
        return
    if error is None:
        op.done.set_result(None)
    else:
        op.done.set_exception(error)
