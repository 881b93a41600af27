"""Operator commands are safe: `dlq replay` replays each DLQ record at most once and never
makes a left-out record unreplayable; `badges load` keeps the claims already recorded.

DLQ records are produced straight to the DLQ topic (shaped as the worker writes them), and
what a replay re-publishes is read back from the input topics, read_committed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from badge_worker import constants as K
from badge_worker import replay_marks
from badge_worker.adapters.kafka_io import make_transactional_producer, partitions_of
from badge_worker.adapters.mongo import BadgeOfAnotherOrg, DlqReplayMarks, Repositories
from badge_worker.cli import store_badges
from badge_worker.domain.models import BadgeDefinition, Claim
from badge_worker.service.replay import ReplayFilter, replay_dlq, replay_transactional_id
from badge_worker.settings import Settings
from tests.integration.helpers import ORG, live_badge

Headers = list[tuple[str, bytes]]
QUIET: dict[str, Any] = {"progress": lambda *_: None}


def dlq_headers(topic: str, partition: int, offset: int, code: int = 500, **extra: str) -> Headers:
    headers = [("trace", b"t-1"), (K.H_INPUT_TOPIC, topic.encode()), (K.H_INPUT_PARTITION, str(partition).encode()),
               (K.H_INPUT_OFFSET, str(offset).encode()), (K.H_ERROR_CODE, str(code).encode()),
               (K.H_ERROR_MESSAGE, b"failed"), (K.H_ORIGINAL_TIMESTAMP, str(1_700_000_000_000 + offset).encode())]
    return headers + [(k.replace("_", "-"), v.encode()) for k, v in extra.items()]


async def to_dlq(s: Settings, items: list[tuple[bytes | None, Headers]], partition: int | None = 0) -> list[int]:
    """Produce DLQ records (value, headers); their DLQ offsets."""
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        metas = [await producer.send_and_wait(s.topic_dlq, value, key=b"k", headers=headers, partition=partition)
                 for value, headers in items]
    finally:
        await producer.stop()
    return [m.offset for m in metas]


def earn(org: Any, rid: str) -> bytes:
    return json.dumps({"orgId": org, "requestId": rid, "badgeMetaId": "b", "customerId": 1}).encode()


async def replays_in(s: Settings) -> list[tuple[dict[str, str], bytes | None, bytes | None, int]]:
    """Every committed record on the input topics: (headers, key, value, timestamp)."""
    partitions = await partitions_of(s, s.input_topics())
    # up to the high watermark: a commit's markers are written just after commit_transaction
    # returns, so the last stable offset may still lag for a moment
    probe = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap_servers, enable_auto_commit=False)
    await probe.start()
    try:
        ends = await probe.end_offsets(partitions)
    finally:
        await probe.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap_servers, isolation_level="read_committed",
                                enable_auto_commit=False)
    await consumer.start()
    found = []
    deadline = asyncio.get_running_loop().time() + 30
    try:
        consumer.assign(partitions)
        for tp, first in (await consumer.beginning_offsets(partitions)).items():
            consumer.seek(tp, first)
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            assert asyncio.get_running_loop().time() < deadline, "input topics did not settle"
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for rec in records:
                    headers = {k: (v or b"").decode() for k, v in (rec.headers or ())}
                    found.append((headers, rec.key, rec.value, rec.timestamp))
    finally:
        await consumer.stop()
    return found


async def secret_of(mongo: Repositories, s: Settings) -> bytes:
    return await replay_marks.signing_key(mongo.db, s.replay_signing_key)


def origins(replays: list[tuple[dict[str, str], Any, Any, int]]) -> list[str]:
    return sorted(h[K.H_REPLAY_OF] for h, *_ in replays)


async def test_filtered_run_then_full_run_replay_each_record_once(topics: Settings, mongo: Repositories) -> None:
    s = topics
    e = s.topic_earns
    offsets = await to_dlq(s, [(earn(ORG, f"r{i}"), dlq_headers(e, 1, i, code=500 if i % 2 else 400))
                               for i in range(6)])
    assert offsets == list(range(6))

    dry = await replay_dlq(s, ReplayFilter(), dry_run=True, **QUIET)
    assert (dry.replayed, dry.skipped, dry.malformed) == (6, 0, 0)
    assert await replays_in(s) == []  # a dry run publishes nothing, marks nothing
    assert await mongo.db[K.DLQ_REPLAYS].count_documents({}) == 0

    first = await replay_dlq(s, ReplayFilter(code=500), **QUIET)
    assert (first.scanned, first.replayed, first.skipped) == (6, 3, 3)
    assert origins(await replays_in(s)) == sorted(f"{e}/1/{i}" for i in (1, 3, 5))

    # the records left out were not passed over: the next run replays exactly those
    before_second_ms = int(time.time() * 1000)
    second = await replay_dlq(s, ReplayFilter(), **QUIET)
    assert (second.replayed, second.skipped, second.already) == (3, 0, 3)  # 1, 3, 5 came after 0 (left out)
    replays = await replays_in(s)
    assert origins(replays) == sorted(f"{e}/1/{i}" for i in range(6))
    # each carries the mark the worker verifies, the original key and value, and the original
    # time in the signed header only: the Kafka timestamp is the replay's own, since records
    # stamped in 2023 fell to the 24 h retention check between the two runs (a flaky CI run)
    secret = await secret_of(mongo, s)
    for headers, key, value, ts in replays:
        assert replay_marks.verify(secret, headers[K.H_REPLAY_SIGNATURE], headers[K.H_REPLAY_OF],
                                   headers[K.H_ORIGINAL_TIMESTAMP], key, value)
        offset = int(headers[K.H_REPLAY_OF].rsplit("/", 1)[1])
        assert int(headers[K.H_ORIGINAL_TIMESTAMP]) == 1_700_000_000_000 + offset
        assert ts > 1_700_000_000_000 + 10**9 and headers["trace"] == "t-1" and key == b"k"
        if offset % 2 == 0:  # replayed by the second run
            assert ts >= before_second_ms - 5_000
        assert K.H_ERROR_CODE not in headers and K.H_INPUT_TOPIC not in headers
    assert await mongo.db[K.DLQ_REPLAYS].count_documents({"state": DlqReplayMarks.DONE}) == 6

    # nothing is left, whatever the replay group
    third = await replay_dlq(s, ReplayFilter(), **QUIET)
    assert (third.scanned, third.replayed) == (0, 0)
    other = await replay_dlq(s, ReplayFilter(), group=f"{s.consumer_group}.other", **QUIET)
    assert (other.scanned, other.replayed, other.already) == (6, 0, 6)
    assert len(await replays_in(s)) == 6


async def test_org_filter_matches_the_org_exactly(topics: Settings, mongo: Repositories) -> None:
    s = topics
    e = s.topic_earns
    values: list[bytes | None] = [earn(1, "a"), earn(10, "b"), earn(100, "c"), earn(11, "d"), earn("1", "e"),
                                  b'{"orgId": 1 ,"requestId": [1]}', b'{"x": {"orgId": 1}}', b"\xff\x00orgId\":1",
                                  b'[{"orgId": 1}]', None, earn(True, "f"), earn(1.5, "g")]
    await to_dlq(s, [(v, dlq_headers(e, 0, i)) for i, v in enumerate(values)])
    report = await replay_dlq(s, ReplayFilter(org=1), **QUIET)
    # orgId 1, the string "1" (the worker reads it as 1) and an orgId 1 with a bad requestId
    assert report.replayed == 3 and report.skipped == len(values) - 3
    assert origins(await replays_in(s)) == sorted(f"{e}/0/{i}" for i in (0, 4, 5))
    again = await replay_dlq(s, ReplayFilter(org=10), **QUIET)
    assert again.replayed == 1
    assert f"{e}/0/1" in origins(await replays_in(s))


async def test_limit_then_a_second_run_replays_the_remainder(topics: Settings, mongo: Repositories) -> None:
    s = topics
    c = s.topic_claims
    claim = json.dumps({"orgId": ORG, "badgeMetaId": "b", "ownerType": "Loyalty", "referenceId": "x"}).encode()
    await to_dlq(s, [(claim, dlq_headers(c, 2, i)) for i in range(5)])
    first = await replay_dlq(s, ReplayFilter(limit=2), **QUIET)
    assert (first.replayed, first.skipped) == (2, 3)
    second = await replay_dlq(s, ReplayFilter(limit=2, topic=c), **QUIET)
    assert (second.replayed, second.skipped) == (2, 1)
    rest = await replay_dlq(s, ReplayFilter(), **QUIET)
    assert (rest.scanned, rest.replayed) == (1, 1)
    assert origins(await replays_in(s)) == sorted(f"{c}/2/{i}" for i in range(5))
    assert (await replay_dlq(s, ReplayFilter(), **QUIET)).scanned == 0


async def test_malformed_records_are_reported_and_skipped(topics: Settings, mongo: Repositories) -> None:
    s = topics
    e = s.topic_earns
    good = dlq_headers(e, 3, 7)
    malformed: list[tuple[bytes | None, Headers]] = [
        (earn(ORG, "m1"), []),  # no headers at all
        (earn(ORG, "m2"), dlq_headers("", 0, 1)),  # empty topic
        (earn(ORG, "m3"), dlq_headers(s.topic_results, 0, 1)),  # not an input topic
        (earn(ORG, "m4"), [(k, b"\xff\xfe" if k == K.H_INPUT_TOPIC else v) for k, v in good]),  # not UTF-8
        (earn(ORG, "m5"), [(k, b"x" if k == K.H_INPUT_OFFSET else v) for k, v in good]),  # bad offset
        (earn(ORG, "m6"), [*good, (K.H_INPUT_TOPIC, e.encode())]),  # repeated
        (earn(ORG, "m7"), [(k, b"soon" if k == K.H_ORIGINAL_TIMESTAMP else v) for k, v in good]),
        (earn(ORG, "m8"), [*good, (K.H_REPLAY_OF, b"nowhere")]),
    ]
    items = [(earn(ORG, "g1"), good), *malformed, (earn(ORG, "g2"), dlq_headers(e, 3, 8))]
    await to_dlq(s, items)
    report = await replay_dlq(s, ReplayFilter(), **QUIET)
    assert (report.replayed, report.malformed) == (2, len(malformed))
    bad = [i for i in report.items if i["action"] == "malformed"]
    assert [i["dlqOffset"] for i in bad] == list(range(1, len(malformed) + 1))
    assert all(i["reason"] for i in bad)
    assert "no x-input-topic" in bad[0]["reason"] and "not an input topic" in bad[2]["reason"]
    assert origins(await replays_in(s)) == [f"{e}/3/7", f"{e}/3/8"]
    # malformed records are final: the committed offset passed them
    assert (await replay_dlq(s, ReplayFilter(), **QUIET)).scanned == 0


async def test_a_replay_that_failed_again_keeps_its_origin_and_time(topics: Settings, mongo: Repositories) -> None:
    s = topics
    e = s.topic_earns
    # the worker's DLQ copy of a replay: x-replay-of names the first delivery
    headers = [*dlq_headers(e, 0, 40), (K.H_REPLAY_OF, f"{e}/2/5".encode())]
    headers = [(k, b"1699999999999" if k == K.H_ORIGINAL_TIMESTAMP else v) for k, v in headers]
    no_ts = [(k, v) for k, v in dlq_headers(e, 0, 41) if k != K.H_ORIGINAL_TIMESTAMP]
    before_ms = int(time.time() * 1000)
    await to_dlq(s, [(earn(ORG, "x"), headers), (earn(ORG, "y"), no_ts)])
    after_ms = int(time.time() * 1000)
    report = await replay_dlq(s, ReplayFilter(), **QUIET)
    assert report.replayed == 2
    by_origin = {h[K.H_REPLAY_OF]: (h, ts) for h, _, _, ts in await replays_in(s)}
    assert by_origin[f"{e}/2/5"][0][K.H_ORIGINAL_TIMESTAMP] == "1699999999999"
    # no x-original-timestamp on the DLQ record: its own timestamp is the one written and
    # signed; the replayed record is stamped later, at replay time
    h, ts = by_origin[f"{e}/0/41"]
    assert before_ms <= int(h[K.H_ORIGINAL_TIMESTAMP]) <= after_ms <= ts


async def _aborted_and_committed_offsets(s: Settings) -> tuple[int, int]:
    """One aborted and one committed record on earns partition 0 (as a crashed run leaves)."""
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers, transactional_id=f"{s.consumer_group}.x",
                                enable_idempotence=True, acks="all")
    await producer.start()
    try:
        await producer.begin_transaction()
        aborted = await (await producer.send(s.topic_earns, b"{}", partition=0))
        await producer.abort_transaction()
        await producer.begin_transaction()
        committed = await (await producer.send(s.topic_earns, b"{}", partition=0))
        await producer.commit_transaction()
    finally:
        await producer.stop()
    return aborted.offset, committed.offset


async def test_pending_marks_left_by_a_crash_are_settled(topics: Settings, mongo: Repositories) -> None:
    s = topics
    e = s.topic_earns
    aborted, committed = await _aborted_and_committed_offsets(s)
    offsets = await to_dlq(s, [(earn(ORG, "p1"), dlq_headers(e, 1, 1)), (earn(ORG, "p2"), dlq_headers(e, 1, 2))])
    marks = mongo.db[K.DLQ_REPLAYS]
    # a crash after the marks were written: p1's transaction aborted, p2's committed
    await marks.insert_many([
        {"_id": f"{s.topic_dlq}/0/{offsets[0]}", "state": "PENDING",
         "target": {"topic": e, "partition": 0, "offset": aborted}},
        {"_id": f"{s.topic_dlq}/0/{offsets[1]}", "state": "PENDING",
         "target": {"topic": e, "partition": 0, "offset": committed}},
    ])
    dry = await replay_dlq(s, ReplayFilter(), dry_run=True, **QUIET)
    assert (dry.replayed, dry.pending) == (0, 2)  # a dry run cannot tell: it fences nobody
    report = await replay_dlq(s, ReplayFilter(), **QUIET)
    assert (report.replayed, report.already, report.pending) == (1, 1, 0)
    replays = [h for h, *_ in await replays_in(s) if K.H_REPLAY_OF in h]
    assert [h[K.H_REPLAY_OF] for h in replays] == [f"{e}/1/1"]  # p1 replayed now; p2 was already
    states = {d["_id"]: d["state"] async for d in marks.find({})}
    assert set(states.values()) == {DlqReplayMarks.DONE}


async def test_concurrent_runs_replay_each_record_once(topics: Settings, mongo: Repositories) -> None:
    s = topics
    e = s.topic_earns
    await to_dlq(s, [(earn(ORG, f"c{i}"), dlq_headers(e, i % 4, i)) for i in range(40)], partition=None)
    groups = [f"{s.consumer_group}.a", f"{s.consumer_group}.b"]
    results = await asyncio.gather(*(replay_dlq(s, ReplayFilter(), group=g, **QUIET) for g in groups),
                                   return_exceptions=True)
    # the second run fences the first, which then fails (nothing of its batch committed)
    for _ in range(3):
        leftover = await replay_dlq(s, ReplayFilter(), group=f"{s.consumer_group}.c", **QUIET)
        if leftover.pending == 0:
            break
    assert origins(await replays_in(s)) == sorted(f"{e}/{i % 4}/{i}" for i in range(40)), results


async def test_reloading_a_badge_keeps_its_claims(topics: Settings, mongo: Repositories) -> None:
    s = topics

    def definition(limit: int, claims: list[dict[str, Any]]) -> BadgeDefinition:
        return live_badge("claimed-b", ownership={"restrictedToOwners": ["Loyalty", "Journeys"], "claims": claims},
                          customerConstraints=[{"constraintType": "CUSTOMER_BADGE_FIXED_VALUE",
                                                "maxEarnLimit": limit}])

    await store_badges(s, [definition(1, [{"ownerType": "Journeys", "referenceId": "j-1", "isActive": True}])])
    # claim commands, as the worker records them
    assert await mongo.set_claim(ORG, "claimed-b", Claim(ownerType="Loyalty", referenceId="prog-1"))
    assert await mongo.set_claim(ORG, "claimed-b", Claim(ownerType="Journeys", referenceId="j-1", isActive=False))
    assert not await mongo.set_claim(ORG, "claimed-b", Claim(ownerType="JOURNEYS", referenceId="j-1", isActive=False))
    assert not await mongo.set_claim(ORG, "claimed-b", Claim(ownerType="Loyalty", referenceId="never", isActive=False))

    # an operator raises the limit; the file still lists j-1 as active and names a new claim
    await store_badges(s, [definition(5, [{"ownerType": "journeys", "referenceId": "j-1", "isActive": True},
                                          {"ownerType": "Loyalty", "referenceId": "prog-2"}])])
    badge = await mongo.get_badge(ORG, "claimed-b")
    assert badge is not None and badge.customerConstraints[0].maxEarnLimit == 5
    assert [c.model_dump(mode="json") for c in badge.ownership.claims] == [
        {"ownerType": "Journeys", "referenceId": "j-1", "isActive": False},  # the stored claim wins
        {"ownerType": "Loyalty", "referenceId": "prog-1", "isActive": True},  # kept
        {"ownerType": "Loyalty", "referenceId": "prog-2", "isActive": True},  # added from the file
    ]
    stored = await mongo.badges.find_one({"_id": "claimed-b"})
    assert stored is not None and "claims" not in stored["ownership"]  # claims live in their own documents
    # the same file again changes no claim
    await store_badges(s, [definition(5, [])])
    again = await mongo.get_badge(ORG, "claimed-b")
    assert again is not None and again.ownership.claims == badge.ownership.claims


async def test_claims_embedded_by_an_earlier_version_are_kept_and_moved(mongo: Repositories) -> None:
    embedded = [{"ownerType": "Loyalty", "referenceId": "old-1", "isActive": True},
                {"ownerType": "Journeys", "referenceId": "old-2", "isActive": False}]
    doc = live_badge("legacy-b").to_document()
    doc.update({"_id": "legacy-b", "claimsVersion": 2})
    doc.setdefault("ownership", {})["claims"] = embedded
    await mongo.badges.insert_one(doc)
    badge = await mongo.get_badge(ORG, "legacy-b")
    assert badge is not None and [c.model_dump(mode="json") for c in badge.ownership.claims] == embedded
    # an unclaim of an embedded claim is a change; claiming the inactive one again too
    assert await mongo.set_claim(ORG, "legacy-b", Claim(ownerType="Loyalty", referenceId="old-1", isActive=False))
    assert not await mongo.set_claim(ORG, "legacy-b", Claim(ownerType="Journeys", referenceId="old-2", isActive=False))
    await mongo.upsert_badge(live_badge("legacy-b", badgeConstraints=[{"constraintType": "BADGE_FIXED_VALUE",
                                                                       "maxEarnLimit": 3}]))
    stored = await mongo.badges.find_one({"_id": "legacy-b"})
    assert stored is not None and "claims" not in stored.get("ownership", {}) and "claimsVersion" not in stored
    badge = await mongo.get_badge(ORG, "legacy-b")
    assert badge is not None
    assert [(c.referenceId, c.isActive) for c in badge.ownership.claims] == [("old-1", False), ("old-2", False)]


async def test_a_load_never_moves_a_badge_to_another_org(settings: Settings, mongo: Repositories) -> None:
    await mongo.upsert_badge(live_badge("tenant-b", name="org A's"))
    other = live_badge("tenant-b", name="org B's").model_copy(update={"orgId": ORG + 1})
    with pytest.raises(BadgeOfAnotherOrg):
        await mongo.upsert_badge(other)
    kept = await mongo.get_badge(ORG, "tenant-b")
    assert kept is not None and kept.name == "org A's"
    assert await mongo.get_badge(ORG + 1, "tenant-b") is None
    with pytest.raises(SystemExit, match="another org"):
        await store_badges(settings, [other])


async def test_reloads_racing_claims_lose_nothing(mongo: Repositories) -> None:
    await mongo.upsert_badge(live_badge("race-b"))
    refs = [f"r{i}" for i in range(12)]

    def limited(limit: int) -> BadgeDefinition:
        return live_badge("race-b", badgeConstraints=[{"constraintType": "BADGE_FIXED_VALUE", "maxEarnLimit": limit}])

    loader = Repositories(mongo.db)  # a second writer, as `badges load` beside a worker
    await asyncio.gather(*(mongo.set_claim(ORG, "race-b", Claim(ownerType="Loyalty", referenceId=r)) for r in refs),
                         *(loader.upsert_badge(limited(n)) for n in range(1, 7)))
    await loader.upsert_badge(limited(9))
    badge = await mongo.get_badge(ORG, "race-b")
    assert badge is not None
    assert sorted(c.referenceId for c in badge.ownership.claims) == sorted(refs)
    assert badge.badgeConstraints[0].maxEarnLimit == 9


async def test_claimed_then_reloaded_badge_still_earns_through_its_claim(topics: Settings,
                                                                         mongo: Repositories) -> None:
    """End to end: claim via the worker, reload with a changed limit, the earn is not 810."""
    from badge_worker.client import Collector, Publisher
    from tests.integration.helpers import running_worker

    s = topics
    loyalty = {"ownerType": "Loyalty", "referenceId": "prog-1"}
    definition = {"ownership": {"restrictedToOwners": ["Loyalty"], "claims": []}}
    await store_badges(s, [live_badge("e2e-b", **definition)])
    async with running_worker(s), Collector(s) as collector, Publisher(s) as pub:
        claim = await pub.send(s.topic_claims, {"orgId": ORG, "badgeMetaId": "e2e-b", **loyalty})
        assert (await collector.wait_for([claim], 60))[claim].code == 200
        await store_badges(s, [live_badge("e2e-b", customerConstraints=[
            {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 2}], **definition)])
        await asyncio.sleep(s.badge_cache_ttl_s * 2)
        earned = await pub.send(s.topic_earns, {"orgId": ORG, "requestId": "e1", "badgeMetaId": "e2e-b",
                                                "customerId": 1, "triggeredBy": loyalty})
        assert (await collector.wait_for([earned], 60))[earned].code == 200



async def test_a_run_killed_before_its_commit_is_undone_by_the_next(topics: Settings, mongo: Repositories) -> None:
    s = topics
    e = s.topic_earns
    (offset,) = await to_dlq(s, [(earn(ORG, "k1"), dlq_headers(e, 1, 1))])
    # a run that re-published the record and wrote its PENDING mark, then died before committing
    dead = make_transactional_producer(s, replay_transactional_id(s))
    await dead.start()
    await dead.begin_transaction()
    meta = await (await dead.send(e, earn(ORG, "k1"), partition=0, headers=[(K.H_REPLAY_OF, b"dead")]))
    await mongo.db[K.DLQ_REPLAYS].insert_one({"_id": f"{s.topic_dlq}/0/{offset}", "state": "PENDING",
                                              "target": {"topic": e, "partition": 0, "offset": meta.offset}})
    try:
        report = await replay_dlq(s, ReplayFilter(), **QUIET)  # fences the dead run: its transaction aborts
    finally:
        with contextlib.suppress(Exception):
            await dead.stop()
    assert (report.replayed, report.already, report.pending) == (1, 0, 0)
    assert origins(await replays_in(s)) == [f"{e}/1/1"]  # once, and not the dead run's copy
    mark = await mongo.db[K.DLQ_REPLAYS].find_one({"_id": f"{s.topic_dlq}/0/{offset}"})
    assert mark is not None and mark["state"] == DlqReplayMarks.DONE and mark["target"]["offset"] > meta.offset
