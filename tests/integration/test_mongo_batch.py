"""The write batcher on a real MongoDB/FerretDB: one bad document never fails another's write."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bson import ObjectId
from bson.errors import InvalidDocument
from pymongo.errors import DuplicateKeyError, OperationFailure

from badge_worker.adapters.mongo import Repositories
from badge_worker.adapters.mongo_batch import WriteBatcher


async def insert_all(batcher: WriteBatcher, collection: Any, docs: list[dict[str, Any]]) -> list[BaseException | None]:
    """Queue every insert in one tick (so they go out as one insert_many); each caller's result."""
    return await asyncio.gather(*(batcher.insert(collection, doc) for doc in docs), return_exceptions=True)


@pytest.mark.parametrize(("bad", "error"), [
    ({"n": 2**70}, OverflowError),  # beyond BSON int64
    ({"s": "lone \ud800 surrogate"}, UnicodeEncodeError),
    ({"o": object()}, InvalidDocument),  # a type BSON cannot encode
    ({"nul\x00key": 1}, InvalidDocument),
])
async def test_a_document_the_driver_cannot_encode_fails_alone(
        mongo: Repositories, bad: dict[str, Any], error: type[BaseException]) -> None:
    collection = mongo.db["batch_probe"]
    good = [{"_id": ObjectId(), "i": i} for i in range(20)]
    docs = [*good[:10], {"_id": ObjectId(), **bad}, *good[10:]]
    results = await insert_all(mongo.writes, collection, docs)
    assert isinstance(results[10], error)
    assert [r for i, r in enumerate(results) if i != 10] == [None] * 20
    stored = {d["_id"] for d in await collection.find({}).to_list()}
    assert stored == {d["_id"] for d in good}


async def test_duplicates_and_a_bad_document_in_one_batch(mongo: Repositories) -> None:
    """The one-by-one fallback still reports each duplicate as DuplicateKeyError (unique index)."""
    await mongo.requests.insert_one({"orgId": 1, "requestId": "taken", "origin": "t/0/0"})
    docs: list[dict[str, Any]] = [
        {"orgId": 1, "requestId": "a", "origin": "t/0/1"},
        {"orgId": 1, "requestId": "taken", "origin": "t/0/2"},
        {"orgId": 1, "requestId": "b", "origin": "t/0/3", "bad": 2**64},
        {"orgId": 1, "requestId": "c", "origin": "t/0/4"},
        {"orgId": 1, "requestId": "c", "origin": "t/0/5"},  # a duplicate within the batch
    ]
    results = await insert_all(mongo.writes, mongo.requests, docs)
    assert results[0] is None and results[3] is None
    assert isinstance(results[1], DuplicateKeyError) and isinstance(results[4], DuplicateKeyError)
    assert isinstance(results[2], OverflowError)
    stored = sorted(d["requestId"] for d in await mongo.requests.find({"orgId": 1}).to_list())
    assert stored == ["a", "c", "taken"]


async def test_a_document_the_server_refuses_fails_alone(mongo: Repositories) -> None:
    """Per-document server errors (here: a key starting with '$') are already per caller."""
    collection = mongo.db["batch_probe_server"]
    docs = [{"_id": ObjectId(), "i": 1}, {"_id": ObjectId(), "x": {"$bad": 1}}, {"_id": ObjectId(), "i": 2}]
    results = await insert_all(mongo.writes, collection, docs)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], OperationFailure)
    assert await collection.count_documents({}) == 2


async def test_a_clean_batch_is_still_one_insert_many(mongo: Repositories, monkeypatch: pytest.MonkeyPatch) -> None:
    collection = mongo.db["batch_probe_calls"]
    calls: list[int] = []
    original = type(collection).insert_many

    async def counting(self: Any, documents: Any, *args: Any, **kwargs: Any) -> Any:
        documents = list(documents)
        calls.append(len(documents))
        return await original(self, documents, *args, **kwargs)

    monkeypatch.setattr(type(collection), "insert_many", counting)
    results = await insert_all(mongo.writes, collection, [{"_id": ObjectId(), "i": i} for i in range(50)])
    assert results == [None] * 50 and calls == [50]
    calls.clear()
    results = await insert_all(mongo.writes, collection, [{"_id": ObjectId(), "i": 2**65},
                                                          *({"_id": ObjectId(), "i": i} for i in range(5))])
    assert isinstance(results[0], OverflowError) and results[1:] == [None] * 5
    assert calls == [6, 1, 1, 1, 1, 1, 1]  # the batch, then one by one


async def test_collections_of_one_flush_are_written_side_by_side(
        mongo: Repositories, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two collections' inserts of one flush overlap (each waits on the server at once), and a
    flush of one writer (flushes=1) still writes them one after the other."""
    first, second = mongo.db["batch_side_a"], mongo.db["batch_side_b"]
    original = type(first).insert_many
    running: list[int] = []
    most: list[int] = []

    async def slow(self: Any, documents: Any, *args: Any, **kwargs: Any) -> Any:
        running.append(1)
        most.append(len(running))
        await asyncio.sleep(0.05)
        try:
            return await original(self, documents, *args, **kwargs)
        finally:
            running.pop()

    monkeypatch.setattr(type(first), "insert_many", slow)
    for flushes, overlap in ((4, 2), (1, 1)):
        most.clear()
        batcher = WriteBatcher(flushes=flushes)
        results = await asyncio.gather(*(batcher.insert(c, {"_id": ObjectId()}) for c in (first, second) * 5))
        assert results == [None] * 10
        assert max(most) == overlap, flushes
    assert await first.count_documents({}) == 10 and await second.count_documents({}) == 10


async def test_writes_queued_while_every_flush_is_busy_all_land(mongo: Repositories) -> None:
    """More callers than flushes, arriving tick after tick: each write lands and each caller hears."""
    collection = mongo.db["batch_busy"]
    batcher = WriteBatcher(flushes=2)

    async def one(i: int) -> None:
        await asyncio.sleep(0.001 * (i % 7))
        await batcher.insert(collection, {"_id": i})

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(300))), 60)
    assert await collection.count_documents({}) == 300
    assert not batcher._flushers and not batcher._queue and not batcher._starting


async def test_a_lock_error_turns_the_batcher_into_one_writer(
        mongo: Repositories, monkeypatch: pytest.MonkeyPatch) -> None:
    """FerretDB on SQLite refuses a second writer (SQLITE_BUSY): that write is retried and from
    then on one flush runs at a time."""
    collection = mongo.db["batch_busy_lock"]
    original = type(collection).insert_many
    refused: list[int] = []

    async def busy_once(self: Any, documents: Any, *args: Any, **kwargs: Any) -> Any:
        if not refused:
            refused.append(1)
            raise OperationFailure("database is locked (SQLITE_BUSY)", 1)
        return await original(self, documents, *args, **kwargs)

    monkeypatch.setattr(type(collection), "insert_many", busy_once)
    batcher = WriteBatcher(flushes=4)
    assert await insert_all(batcher, collection, [{"_id": i} for i in range(5)]) == [None] * 5
    assert refused == [1] and batcher.flushes == 1
    assert await collection.count_documents({}) == 5
