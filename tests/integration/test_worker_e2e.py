"""End to end through Kafka, Redis and MongoDB: every code, poison messages, DLQ replay,
redelivery."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

from bson import ObjectId

from badge_worker import constants as K
from badge_worker import replay_marks
from badge_worker.adapters.mongo import Repositories
from badge_worker.client import Collector, Publisher
from badge_worker.service.replay import ReplayFilter, replay_dlq
from badge_worker.settings import Settings
from tests.conftest import settings_env
from tests.integration.helpers import DAY, ORG, live_badge, load, running_worker

LOYALTY = {"ownerType": "Loyalty", "referenceId": "prog-1"}


async def test_every_error_code_end_to_end(topics: Settings, mongo: Repositories) -> None:
    s = topics
    now = time.time()
    await load(mongo,
               live_badge("earn-b", ownership={"restrictedToOwners": ["Loyalty"], "claims": []},
                          customerConstraints=[{"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 1}],
                          badgeConstraints=[{"constraintType": "BADGE_FIXED_VALUE", "maxEarnLimit": 3}]),
               live_badge("issue-b", earnType="ISSUE_EARN",
                          issuedBadgeExpiry={"expiryType": "RELATIVE", "relativeExpirytype": "DAYS", "value": 5}),
               live_badge("off-b", active=False),
               live_badge("other-org", orgId=ORG + 1))
    # a corrupt definition: reading it fails, which is not a bad command but a broken message (500)
    await mongo.badges.insert_one({"_id": "broken-b", "orgId": ORG, "customerConstraints": "garbage"})

    def earn(rid: str, customer: int, badge: str = "earn-b", **extra: object) -> dict[str, object]:
        return {"orgId": ORG, "requestId": rid, "badgeMetaId": badge, "customerId": customer, **extra}

    claims = [
        ({"orgId": ORG, "badgeMetaId": "earn-b", **LOYALTY}, 200),
        ({"orgId": ORG, "badgeMetaId": "earn-b", "ownerType": "Journeys", "referenceId": "j"}, 832),
        ({"orgId": ORG, "badgeMetaId": "earn-b", "referenceId": "j"}, 716),
        ({"orgId": ORG, "badgeMetaId": "earn-b", "ownerType": "Loyalty"}, 717),
        ({"orgId": ORG, "badgeMetaId": "earn-b", "ownerType": "Wizards", "referenceId": "j"}, 400),
        ({"orgId": ORG, "badgeMetaId": "nope", **LOYALTY}, 404),
    ]
    earns = [
        (earn("e1", 1, triggeredBy=LOYALTY), 200),
        (earn("e2", 1), 830),
        (earn("e3", 2, triggeredBy={"ownerType": "loyalty", "referenceId": "ghost"}), 810),
        (earn("e1", 3), 809),
        ({"orgId": ORG, "badgeMetaId": "earn-b", "customerId": 3}, 804),
        ({"orgId": ORG, "requestId": "e5", "badgeMetaId": "earn-b"}, 812),
        (earn("e6", 3, badge="nope"), 404),
        (earn("e7", 3, badge="other-org"), 404),
        (earn("e8", 3, badge="off-b"), 815),
        (earn("e9", 3, earnEventDate=now + 2 * DAY), 750),
        (earn("e10", 3, earnEventDate=now - 60 * DAY), 816),
        (earn("e11", 4, badge="issue-b"), 811),
        ({"orgId": ORG, "type": "issue", "requestId": "i1", "badgeMetaId": "issue-b", "customerId": 4}, 200),
        ({"orgId": ORG, "type": "issue", "requestId": "i2", "badgeMetaId": "issue-b", "customerId": 4}, 1040),
        (earn("e12", 4, badge="issue-b", earnEventDate=now + 60), 200),
        (earn("e13", 4, badge="issue-b", earnEventDate=now + 7 * DAY - 60), 750),
        (earn("e14", 5), 200),
        (earn("e15", 6), 200),
        (earn("e16", 7), 831),
        (earn("e17", 8, badge="broken-b"), 500),
        (earn("e18", 8, customerId="many"), 400),
    ]
    async with running_worker(s), Collector(s) as collector, Publisher(s) as pub:
        claim_coords = [await pub.send(s.topic_claims, body) for body, _ in claims]
        await collector.wait_for(claim_coords, 60)
        earn_coords = []
        for body, _ in earns:  # one at a time: the expected codes depend on the order
            earn_coords.append(await pub.send(s.topic_earns, body))
            await collector.wait_for(earn_coords[-1:], 60)
        garbage = await pub.send(s.topic_earns, b"\x00not json", raw=True)
        seen = await collector.wait_for([*claim_coords, *earn_coords, garbage], 60)
        first = seen[earn_coords[0]].body["data"]
        revokes = [
            ({"orgId": ORG, "type": "revokeEarn", "requestId": "v1", "badgeMetaId": "earn-b", "customerId": 1,
              "earnedBadgeId": first["earnedBadgeId"]}, 200),
            ({"orgId": ORG, "type": "revokeEarn", "requestId": "v2", "badgeMetaId": "earn-b", "customerId": 1,
              "earnedBadgeId": first["earnedBadgeId"]}, 814),
            ({"orgId": ORG, "type": "revokeEarn", "requestId": "v3", "badgeMetaId": "earn-b", "customerId": 1,
              "earnedBadgeId": str(ObjectId())}, 404),
            ({"orgId": ORG, "type": "revokeIssue", "requestId": "v4", "badgeMetaId": "issue-b", "customerId": 4},
             200),
            ({"orgId": ORG, "type": "revokeIssue", "requestId": "v5", "badgeMetaId": "issue-b", "customerId": 4},
             404),
            (earn("e19", 7), 200),  # the revoked earn gave its badge-level slot back
        ]
        revoke_coords = []
        for body, _ in revokes:
            revoke_coords.append(await pub.send(s.topic_earns, body))
            await collector.wait_for(revoke_coords[-1:], 60)
        seen = await collector.wait_for([*claim_coords, *earn_coords, garbage, *revoke_coords], 60)
        await collector.poll(1000)

    expected = [c for _, c in claims] + [c for _, c in earns] + [400] + [c for _, c in revokes]
    got = [seen[c].code for c in [*claim_coords, *earn_coords, garbage, *revoke_coords]]
    assert got == expected
    assert {804, 812, 716, 717, 400, 404, 809, 810, 811, 814, 815, 816, 750, 1040, 830, 831, 832, 500} <= set(got)
    # exactly one outcome each, on the right topic, with the input coordinates as headers
    counts = collector.count_by_input()
    assert all(counts[c] == 1 for c in seen)
    for _coord, outcome in seen.items():
        assert outcome.topic == (s.topic_results if outcome.code == 200 else s.topic_errors)
        assert outcome.body["warnings"] == []
    e1 = seen[earn_coords[0]].body
    assert e1["type"] == "earn" and e1["requestId"] == "e1" and ObjectId.is_valid(e1["data"]["earnedBadgeId"])
    assert e1["data"]["issuedId"] is None and e1["data"]["expiresOn"] is None
    e12 = seen[earn_coords[14]].body["data"]
    issue = seen[earn_coords[12]].body["data"]
    assert e12["issuedId"] == issue["issuedId"] and issue["expiresOnISO"].endswith("Z")
    limit = seen[earn_coords[1]].body["errors"][0]
    assert limit["detail"]["constraintType"] == "CUSTOMER_BADGE_FIXED_VALUE"
    assert "nextAvailableOn" in limit["detail"]
    # the stores hold the effects: earned badges by ObjectId, queryable per customer
    assert await mongo.earned.count_documents({"orgId": ORG, "status": "ACTIVE"}) == 4
    assert await mongo.earned.count_documents({"orgId": ORG, "customerId": 1, "status": "REVOKED"}) == 1
    assert isinstance((await mongo.earned.find_one({"requestId": "e12"}))["_id"], ObjectId)  # type: ignore[index]
    stored = await mongo.get_badge(ORG, "earn-b")
    assert stored is not None
    assert [c.model_dump(mode="json") for c in stored.ownership.claims] == [
        {"ownerType": "Loyalty", "referenceId": "prog-1", "isActive": True}]


async def test_poison_message_goes_to_the_dlq_and_replay_brings_it_back(
        topics: Settings, mongo: Repositories, tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = topics
    await load(mongo, live_badge("good-b"))
    await mongo.badges.insert_one({"_id": "later-b", "orgId": ORG, "earnType": ["broken"]})
    bodies: list[object] = [
        {"orgId": ORG, "requestId": "g1", "badgeMetaId": "good-b", "customerId": 1},
        {"orgId": ORG, "requestId": "p1", "badgeMetaId": "later-b", "customerId": 2},  # poison: badge unreadable
        {"orgId": ORG, "requestId": "g2", "badgeMetaId": "good-b", "customerId": 3},
    ]
    async with running_worker(s), Collector(s) as collector, Publisher(s) as pub:
        coords = [await pub.send(s.topic_earns, b) for b in bodies]
        coords.append(await pub.send(s.topic_earns, b"not json at all", raw=True))
        seen = await collector.wait_for(coords, 60)
        assert [seen[c].code for c in coords] == [200, 500, 200, 400]

        # both poison messages are in the DLQ with their original bytes and coordinates
        dry = await replay_dlq(s, ReplayFilter(), dry_run=True)
        assert dry.replayed == 2
        assert {i["origin"] for i in dry.items} == {f"{c[0]}/{c[1]}/{c[2]}" for c in (coords[1], coords[3])}
        assert {i["code"] for i in dry.items} == {"500", "400"}

        # an operator fixes the definition, then replays only the 500s
        await mongo.badges.replace_one({"_id": "later-b"}, live_badge("later-b").to_document())
        report = await replay_dlq(s, ReplayFilter(code=500))
        assert (report.replayed, report.skipped) == (1, 1)
        replayed = await collector.wait_for_new(1, 60)
        assert replayed[0].code == 200 and replayed[0].body["requestId"] == "p1"  # the same message, not 809
        # the 400 left out by the filter was not passed over: the next run replays it, and only it
        again = await replay_dlq(s, ReplayFilter())
        assert again.replayed == 1 and [i["code"] for i in again.items] == ["400"]
        (first_400,) = await collector.wait_for_new(1, 60)
        assert first_400.code == 400 and first_400.body == seen[coords[3]].body  # its first outcome again
        # not JSON, it failed again: a new DLQ copy naming the first delivery. Any replay group
        # replays only that copy: each DLQ record is replayed at most once
        report = await replay_dlq(s, ReplayFilter(), group=f"{s.consumer_group}.other")
        assert (report.replayed, report.already) == (1, 2)
        assert report.items[-1]["origin"] == f"{coords[3][0]}/{coords[3][1]}/{coords[3][2]}"
        more = await collector.wait_for_new(1, 60)
        assert [o.code for o in more] == [400]
        earned = await mongo.earned.find({"requestId": "p1"}).to_list()
        assert len(earned) == 1
        assert replayed[0].body["data"]["earnedBadgeId"] == str(earned[0]["_id"])

    # the CLI lists the DLQ too: with a new replay group, only the copy not replayed yet
    cli = subprocess.run([sys.executable, "-m", "badge_worker.cli", "dlq", "replay", "--dry-run"],
                         env={**settings_env(s), "CONSUMER_GROUP": f"cli-{uuid.uuid4().hex[:6]}"},
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    # the 500 and the 400 (replayed), the 400's first copy (replayed) and its second copy
    assert "would replay 1," in cli.stderr and "already replayed 3" in cli.stderr
    listed = [json.loads(line) for line in cli.stdout.splitlines()]
    assert [(i["action"], i["code"]) for i in listed] == [("would replay", "400")]


async def test_redelivery_gets_the_first_outcome_and_reuse_gets_809(topics: Settings, mongo: Repositories) -> None:
    s = topics
    await load(mongo, live_badge("b"))
    body = {"orgId": ORG, "requestId": "same", "badgeMetaId": "b", "customerId": 1}
    value = json.dumps(body).encode()
    async with running_worker(s), Collector(s) as collector, Publisher(s) as pub:
        first = await pub.send(s.topic_earns, body)
        original = (await collector.wait_for([first], 60))[first]
        replay_of = f"{first[0]}/{first[1]}/{first[2]}"
        original_ts = str(int(original.received_at * 1000))
        # a producer's own claim to be that message, unsigned: a new message reusing the requestId
        await pub.producer.send_and_wait(s.topic_earns, value, key=b"1",
                                         headers=[(K.H_REPLAY_OF, replay_of.encode()),
                                                  (K.H_ORIGINAL_TIMESTAMP, original_ts.encode())])
        forged = await collector.wait_for_new(1, 60)
        # the same message delivered again, marked as `dlq replay` marks it
        secret = await replay_marks.signing_key(mongo.db, s.replay_signing_key)
        signature = replay_marks.sign(secret, replay_of, original_ts, b"1", value)
        await pub.producer.send_and_wait(s.topic_earns, value, key=b"1",
                                         headers=[(K.H_REPLAY_OF, replay_of.encode()),
                                                  (K.H_ORIGINAL_TIMESTAMP, original_ts.encode()),
                                                  (K.H_REPLAY_SIGNATURE, signature.encode())])
        redelivered = await collector.wait_for_new(1, 60)
        # a new message that reuses the requestId
        reuse = await pub.send(s.topic_earns, {**body, "customerId": 2})
        reused = (await collector.wait_for([reuse], 60))[reuse]
    assert original.code == 200
    assert forged[0].code == 809
    assert redelivered[0].body == original.body
    assert reused.code == 809
    assert await mongo.earned.count_documents({"requestId": "same"}) == 1


async def test_a_record_at_the_input_size_limit_gets_its_outcome_and_a_whole_dlq_copy(
        topics: Settings, mongo: Repositories) -> None:
    """The broker takes inputs up to ~1 MB; the DLQ copy adds headers to that. The output
    topics the worker creates take 2 MB, so the copy keeps every byte and nothing stalls."""
    from aiokafka import AIOKafkaConsumer

    s = topics
    value = b"x" * 1_048_400  # not JSON; just under the broker's default message.max.bytes
    async with running_worker(s), Collector(s) as collector, Publisher(s) as pub:
        pub.producer._max_request_size = 2_000_000  # the test producer's own client-side cap
        big = await pub.send(s.topic_earns, value, raw=True)
        after = await pub.send(s.topic_earns, {"orgId": ORG, "requestId": "after", "badgeMetaId": "none",
                                               "customerId": 1})
        seen = await collector.wait_for([big, after], 90)
    assert seen[big].code == 400 and seen[after].code == 404
    dlq = AIOKafkaConsumer(s.topic_dlq, bootstrap_servers=s.kafka_bootstrap_servers, auto_offset_reset="earliest",
                           isolation_level="read_committed", group_id=None, fetch_max_bytes=4_000_000,
                           max_partition_fetch_bytes=4_000_000)
    await dlq.start()
    try:
        got = await dlq.getmany(timeout_ms=10_000)
    finally:
        await dlq.stop()
    copies = [r for records in got.values() for r in records]
    assert [len(r.value or b"") for r in copies] == [len(value)]
    assert dict(copies[0].headers)[K.H_INPUT_OFFSET] == str(big[2]).encode()
