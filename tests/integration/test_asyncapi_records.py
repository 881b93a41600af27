"""Real records of a running worker match the JSON Schemas of docs/schemas (generated from
wire.py): every outcome, event and DLQ copy of a stream with every command type, successes
and refusals, and the commands themselves against the input schemas."""

from __future__ import annotations

import json
import time
from typing import Any

from aiokafka import AIOKafkaConsumer
from jsonschema import Draft202012Validator

from badge_worker import asyncapi
from badge_worker.adapters.kafka_io import partitions_of
from badge_worker.adapters.mongo import Repositories
from badge_worker.client import Collector, Publisher
from badge_worker.domain.events import EventName
from badge_worker.settings import Settings
from tests.integration.helpers import ORG, live_badge, load, running_worker
from tests.integration.test_events import EventReader

LOYALTY = {"ownerType": "Loyalty", "referenceId": "prog-1"}


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((asyncapi.DOCS / "schemas" / f"{name}.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def problems(v: Draft202012Validator, instance: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(instance)]


async def read_all(s: Settings, topic: str, count: int) -> list[Any]:
    tps = await partitions_of(s, [topic])
    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap_servers, isolation_level="read_committed",
                                enable_auto_commit=False)
    await consumer.start()
    records: list[Any] = []
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + 60
        while len(records) < count:
            assert time.monotonic() < deadline, f"{len(records)} of {count} records on {topic}"
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                records += batch
    finally:
        await consumer.stop()
    return records


async def test_every_record_the_worker_writes_matches_its_schema(topics: Settings, mongo: Repositories) -> None:
    s = topics
    await load(mongo,
               live_badge("wire-b", customerConstraints=[{"constraintType": "CUSTOMER_BADGE_FIXED_VALUE",
                                                          "maxEarnLimit": 1}],
                          earnedBadgeExpiry={"expiryType": "RELATIVE", "relativeExpirytype": "DAYS", "value": 5}),
               live_badge("wire-i", earnType="ISSUE_EARN", issuedBadgeExpiry={"expiryType": "NEVER"}))

    def cmd(kind: str, rid: str, badge: str = "wire-b", **extra: object) -> dict[str, object]:
        return {"orgId": ORG, "type": kind, "requestId": rid, "badgeMetaId": badge, "customerId": 7, **extra}

    claims = [{"orgId": ORG, "badgeMetaId": "wire-b", **LOYALTY}, {"orgId": ORG, "badgeMetaId": "wire-b"},
              {"orgId": ORG, "badgeMetaId": "wire-i", **LOYALTY, "requestId": "c3"}]
    trace = [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
    async with running_worker(s), Collector(s) as collector, Publisher(s) as pub, EventReader(s) as reader:
        coords = [await pub.send(s.topic_claims, claims[0])]
        await collector.wait_for(coords, 60)
        coords.append(await pub.send(s.topic_claims, claims[1]))  # 716: no ownerType
        coords.append(await pub.send(s.topic_claims, claims[2]))
        await collector.wait_for(coords, 60)
        sent = [cmd("issue", "w1", "wire-i", triggeredBy=LOYALTY), cmd("earn", "w2", "wire-i"),
                cmd("earn", "w3", earnEventDate=time.time() - 60, triggeredBy=LOYALTY), cmd("earn", "w4"),
                cmd("earn", "w5", "no-such-badge")]
        for body in sent:  # in order: the later ones depend on the earlier
            coords.append(await pub.send(s.topic_earns, body, headers=trace))
            await collector.wait_for(coords[-1:], 60)
        earned = next(o for o in collector.outcomes if o.body.get("requestId") == "w3").body["data"]["earnedBadgeId"]
        later = [cmd("revokeEarn", "w6", earnedBadgeId=earned), cmd("revokeIssue", "w7", "wire-i"),
                 {"orgId": ORG, "type": "earn", "badgeMetaId": "wire-b", "customerId": 7}]  # 804
        for body in later:
            coords.append(await pub.send(s.topic_earns, body))
            await collector.wait_for(coords[-1:], 60)
        coords.append(await pub.send(s.topic_earns, b"\xffnot json", raw=True))  # 400 and a DLQ copy
        seen = await collector.wait_for(coords, 60)
        await reader.wait_count(5)  # issue, two earns, the revokes of one earn and one issue
        await reader.settle(1)
        dlq = await read_all(s, s.topic_dlq, 1)

    codes = sorted(o.code for o in seen.values())
    assert codes == sorted([200, 716, 200, 200, 200, 200, 830, 404, 200, 200, 804, 400]), codes
    outcome, out_headers = validator("Outcome"), validator("OutputHeaders")
    for o in seen.values():
        assert not problems(outcome, o.body), (o.body, problems(outcome, o.body))
        assert not problems(out_headers, o.headers), (o.headers, problems(out_headers, o.headers))
    event = validator("Event")
    names = set()
    for r in reader.records:
        body = json.loads(r.value)
        names.add(body["eventName"])
        assert not problems(event, body), (body, problems(event, body))
        headers = {k: v.decode() for k, v in r.headers or ()}
        assert not problems(out_headers, headers), headers
    assert names == {n.value for n in EventName}  # every kind of event was seen
    dlq_headers = validator("DlqHeaders")
    for r in dlq:
        headers = {k: v.decode("utf-8", "replace") for k, v in r.headers or ()}
        assert not problems(dlq_headers, headers), (headers, problems(dlq_headers, headers))
    # the commands the worker accepted are valid commands; the ones it refused for a missing field are not
    claim_schema, earn_schema = validator("ClaimCommand"), validator("EarnCommand")
    assert not problems(claim_schema, claims[0]) and problems(claim_schema, claims[1])
    assert not problems(claim_schema, claims[2])
    for body in sent + later[:2]:
        assert not problems(earn_schema, body), (body, problems(earn_schema, body))
    assert problems(earn_schema, later[2])  # no requestId


def test_the_schemas_refuse_what_the_worker_never_writes() -> None:
    outcome = validator("Outcome")
    good = {"type": "earn", "orgId": 1, "requestId": "r", "data": None, "warnings": [],
            "errors": [{"code": 830, "message": "limit"}]}
    assert not problems(outcome, good)
    assert problems(outcome, {**good, "extra": 1})
    assert problems(outcome, {**good, "errors": [{"code": 999, "message": "no such code"}]})
    event = validator("Event")
    assert problems(event, {"eventName": "badgeLost", "eventId": "x", "orgId": 1, "createdAt": "t",
                            "requestId": "r", "data": {}})
