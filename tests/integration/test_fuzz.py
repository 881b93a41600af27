"""The per-record fault boundary, end to end: whatever the bytes and headers of a record, a
real worker publishes exactly one outcome for it, never a 500 for a bad input, and keeps
running; valid commands interleaved with the garbage are all accepted.

About 10,000 generated records (fixed seed): random bytes, deep nesting, other encodings,
lone surrogates in every string field, huge / negative / float / NaN / Infinity numbers and
wrong types in every field, missing fields, unknown types, huge strings, odd timestamps, and
junk headers including forged x-replay-of / x-original-timestamp / x-replay-signature.
Copies of valid earns with a forged replay mark are new messages (809, a reused requestId);
copies signed with the worker's key, as `dlq replay` writes them, get the first outcome again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from badge_worker import constants as K
from badge_worker import replay_marks
from badge_worker.adapters.kafka_io import partitions_of
from badge_worker.adapters.mongo import Repositories
from badge_worker.client import Collector, Coord
from badge_worker.service.worker import Worker
from badge_worker.settings import Settings
from tests.integration.helpers import DAY, ORG, live_badge, load

pytestmark = pytest.mark.slow

SEED = 20260707
FUZZ_RECORDS = int(os.environ.get("FUZZ_RECORDS", "10000"))
VALID_EVERY = 6  # one valid command after every few generated ones
BADGE = "fuzz-b"

SURROGATE_TEXTS = ["\ud800", "a\udfffb", "\udc00\ud800", "x\ud83d", "\ude00y"]
ODD_TEXTS = [
    "", " ", "\x00", "a\x00b", "\u202e", "\ufeff", "é" * 10, "𝄞", "null", "NaN", "-1", "0x10", "9" * 30, "1e400",
    "2024-13-45", "2024-01-01T00:00:00Z", "0001-01-01", "9999-12-31T23:59:59Z", "1899-01-01", "earn", "EARN",
    "claim", "unclaim", "revokeEarn", "revokeissue", "issue", "explode", "Loyalty", "loyalty", "LOYALTY_PROMOTIONS",
    BADGE, "\n", "\\", '"', "'", "{", "[", "$gt", "a.b", "\u0663", "\uff11\uff12\uff13", "\u0085", "\u2028",
]
ODD_NUMBERS: list[Any] = [
    0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 2**70, 10**400, -(10**400),
    1.5, -0.0, 1e308, -1e308, 5e-324, float("nan"), float("inf"), float("-inf"), 1716803487, 1716803487.123,
    10**18, 1e19, 62090013,
]
WRONG_TYPES: list[Any] = [None, True, False, [], {}, [1, 2], {"a": 1}, [[[]]], {"$gt": ""},
                          {"ownerType": "Loyalty"}, [None], {"": None}]
FIELDS = ["orgId", "requestId", "type", "badgeMetaId", "customerId", "earnEventDate", "issueEventDate",
          "triggeredBy", "issuedId", "earnedBadgeId", "ownerType", "referenceId"]
TEMPLATES: list[tuple[str, dict[str, Any]]] = [
    ("earns", {"orgId": ORG, "requestId": "j", "badgeMetaId": BADGE, "customerId": 7}),
    ("earns", {"orgId": ORG, "requestId": "j", "badgeMetaId": BADGE, "customerId": 7, "earnEventDate": "now",
               "triggeredBy": {"ownerType": "Loyalty", "referenceId": "p-1"}}),
    ("earns", {"orgId": ORG, "type": "issue", "requestId": "j", "badgeMetaId": BADGE, "customerId": 7}),
    ("earns", {"orgId": ORG, "type": "revokeEarn", "requestId": "j", "badgeMetaId": BADGE, "customerId": 7,
               "earnedBadgeId": "0" * 24}),
    ("earns", {"orgId": ORG, "type": "revokeIssue", "requestId": "j", "badgeMetaId": BADGE, "customerId": 7,
               "issuedId": "x"}),
    ("claims", {"orgId": ORG, "badgeMetaId": BADGE, "ownerType": "Loyalty", "referenceId": "p-1"}),
    ("claims", {"orgId": ORG, "type": "unclaim", "badgeMetaId": BADGE, "ownerType": "Journeys", "referenceId": "j"}),
]
HEADER_NAMES = [K.H_REPLAY_OF, K.H_ORIGINAL_TIMESTAMP, K.H_REPLAY_SIGNATURE, K.H_INPUT_TOPIC, K.H_INPUT_OFFSET,
                K.H_ERROR_CODE, K.H_ERROR_MESSAGE, K.H_ERROR_TYPE, "content-type", "é-ключ", "x" * 300, ""]


class Fuzz:
    """Generated records, reproducible from the seed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.big_left = 6  # records of ~0.9 MB (each also travels to the DLQ or as an outcome)
        self.big_in_body = False

    def text(self) -> str:
        r = self.rng
        kind = r.random()
        if kind < 0.25:
            return r.choice(SURROGATE_TEXTS)
        if kind < 0.55:
            return r.choice(ODD_TEXTS)
        if kind < 0.58 and self.big_left > 0 and not self.big_in_body:  # one per record: under 1 MB
            self.big_left -= 1
            self.big_in_body = True
            return r.choice("rtq") * r.choice([900_000, 800_000])
        if kind < 0.62:
            return "r" * r.choice([1024, 1025, 5000, 60_000])
        # any code point, surrogates included
        return "".join(chr(r.choice([r.randint(0, 0x7F), r.randint(0, 0xFFFF), r.randint(0, 0x10FFFF)]))
                       for _ in range(r.randint(0, 12)))

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        kind = r.random()
        if kind < 0.4:
            return self.text()
        if kind < 0.7:
            return r.choice(ODD_NUMBERS)
        if kind < 0.85 or depth > 2:
            return r.choice(WRONG_TYPES)
        if kind < 0.93:
            return [self.value(depth + 1) for _ in range(r.randint(0, 3))]
        return {self.text()[:20]: self.value(depth + 1) for _ in range(r.randint(0, 3))}

    def body(self) -> tuple[str, Any]:
        r = self.rng
        self.big_in_body = False
        # claims of one badge run one after the other (one entity): fewer of them keeps the test quick
        stream, template = r.choice(TEMPLATES[5:] if r.random() < 0.12 else TEMPLATES[:5])
        body: dict[str, Any] = json.loads(json.dumps(template))
        body["requestId"] = f"junk-{r.randint(0, 10**9)}"
        if body.get("earnEventDate") == "now":
            body["earnEventDate"] = time.time() - r.randint(0, 40) * DAY
        for _ in range(r.randint(1, 3)):
            name = r.choice(FIELDS)
            action = r.random()
            if action < 0.15:
                body.pop(name, None)
            elif name == "triggeredBy" and action < 0.6:
                body[name] = {"ownerType": self.value(), "referenceId": self.value()}
            else:
                body[name] = self.value()
        if r.random() < 0.1:
            body[self.text()[:30]] = self.value()
        if r.random() < 0.05:
            return stream, r.choice([self.value(), [body], body.get("requestId")])
        return stream, body

    def raw(self) -> tuple[str, bytes | None]:
        """A topic and the bytes of a generated record."""
        r = self.rng
        kind = r.random()
        stream, body = self.body()
        if kind < 0.08:
            return stream, r.randbytes(r.randint(0, 300))
        if kind < 0.12:
            depth = r.choice([99, 100, 101, 150, 999, 1000, 5000, 100_000])
            opener, closer = r.choice([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"x":', b"}]")])
            inner = opener * depth + b"1" + closer * depth
            if r.random() < 0.5:
                return stream, b'{"orgId": %d, "requestId": "deep", "badgeMetaId": "%s", "customerId": 1, "x": %s}' % (
                    ORG, BADGE.encode(), inner)
            return stream, opener * depth if r.random() < 0.5 else inner
        if kind < 0.14:
            return stream, None if r.random() < 0.5 else b""
        text = json.dumps(body, ensure_ascii=r.random() < 0.5)
        if kind < 0.20:
            encoding = r.choice(["utf-16", "utf-16-le", "utf-32", "utf-32-be"])
            return stream, text.encode(encoding, "surrogatepass")
        data = text.encode("utf-8", "surrogatepass")  # lone surrogates not escaped: CESU-8 bytes
        if kind < 0.25:
            cut = r.randint(0, max(0, len(data) - 1))
            return stream, data[:cut]
        if kind < 0.27:
            return stream, b"\xef\xbb\xbf" + data
        if kind < 0.30 and len(data) < 10_000:
            spot = r.randint(0, len(data))
            return stream, data[:spot] + r.randbytes(r.randint(1, 4)) + data[spot:]
        return stream, data

    def headers(self) -> list[tuple[str, bytes]]:
        r = self.rng
        if r.random() < 0.5:
            return []
        headers = []
        for _ in range(r.randint(1, 5)):
            name = r.choice(HEADER_NAMES)
            value = r.choice([
                b"", b"\xff\xfe\x00", b"\xed\xa0\x80", str(r.randint(-(10**20), 10**20)).encode(), b"9" * 400,
                b"1e12", b"1700000000000", b"badges.earns/0/1", b"t/0/0", r.randbytes(r.randint(0, 64)),
                b"0" * 64, "١٢٣".encode(), b"x" * 20_000,
            ])
            headers.append((name, value))
        return headers

    def timestamp(self) -> int | None:
        r = self.rng
        return r.choice([0, 1, 10**9, 10**12, int((time.time() - 3650 * DAY) * 1000)]) if r.random() < 0.05 else None

    def key(self) -> bytes | None:
        r = self.rng
        return r.choice([None, b"", b"7", r.randbytes(r.randint(1, 40)), b"\xed\xa0\x80"])


@contextlib.asynccontextmanager
async def worker_task(settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)


async def read_dlq(s: Settings, expected: int, timeout: float = 120) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap_servers, isolation_level="read_committed",
                                enable_auto_commit=False, max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    records: list[Any] = []
    try:
        tps = await partitions_of(s, [s.topic_dlq])
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for recs in batch.values():
                records += recs
        batch = await consumer.getmany(timeout_ms=1000)  # one more look: nothing beyond `expected`
        for recs in batch.values():
            records += recs
    finally:
        await consumer.stop()
    return records


async def test_fuzzed_records_get_exactly_one_outcome_and_valid_commands_all_succeed(
        topics: Settings, mongo: Repositories) -> None:
    s = topics
    await load(mongo, live_badge(BADGE))
    secret = await replay_marks.signing_key(mongo.db, s.replay_signing_key)  # the worker's key
    fuzz = Fuzz(SEED)
    tag = uuid.uuid4().hex[:8]
    topic_of = {"earns": s.topic_earns, "claims": s.topic_claims}
    sent: dict[Coord, bytes | None] = {}
    valid: list[Coord] = []
    forged: list[Coord] = []
    replays: dict[Coord, Coord] = {}  # a signed replay -> the valid earn it replays
    valid_earns: list[tuple[Coord, bytes, bytes]] = []  # coord, key, value: to forge replays of
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers, enable_idempotence=True, acks="all",
                                linger_ms=20, max_request_size=1_048_576)
    started = time.monotonic()
    async with worker_task(s) as task, Collector(s) as collector:
        await producer.start()
        try:
            n = 0
            while n < FUZZ_RECORDS:
                pending: list[tuple[str, Any, bytes | None, str]] = []  # topic, future, value, role
                for _ in range(500):
                    stream, value = fuzz.raw()
                    key = fuzz.key() if value is not None else b"k"  # a tombstone needs a key
                    fut = await producer.send(topic_of[stream], value, key=key, headers=fuzz.headers(),
                                              timestamp_ms=fuzz.timestamp())
                    pending.append((topic_of[stream], fut, value, "junk"))
                    n += 1
                    if n % VALID_EVERY == 0:
                        stream, value, key = valid_command(fuzz.rng, tag, n)
                        fut = await producer.send(topic_of[stream], value, key=key)
                        pending.append((topic_of[stream], fut, value, "valid-earn" if stream == "earns" else "valid"))
                # forged replays of earns already acknowledged: same key and value, the original's
                # coordinates in x-replay-of, a made-up signature. Not trusted: a reused requestId.
                for coord, key, value in fuzz.rng.sample(valid_earns, min(10, len(valid_earns))):
                    headers = [(K.H_REPLAY_OF, f"{coord[0]}/{coord[1]}/{coord[2]}".encode()),
                               (K.H_ORIGINAL_TIMESTAMP, b"1700000000000"), (K.H_REPLAY_SIGNATURE, b"ab" * 32)]
                    fut = await producer.send(coord[0], value, key=key, headers=headers)
                    pending.append((coord[0], fut, value, "forged"))
                # and true replays (what `dlq replay` writes): signed, so the same message again
                for coord, key, value in fuzz.rng.sample(valid_earns, min(3, len(valid_earns))):
                    origin, original_ts = f"{coord[0]}/{coord[1]}/{coord[2]}", str(int(time.time() * 1000))
                    headers = [(K.H_REPLAY_OF, origin.encode()), (K.H_ORIGINAL_TIMESTAMP, original_ts.encode()),
                               (K.H_REPLAY_SIGNATURE,
                                replay_marks.sign(secret, origin, original_ts, key, value).encode())]
                    fut = await producer.send(coord[0], value, key=key, headers=headers)
                    pending.append((coord[0], fut, value, f"replay:{origin}"))
                for topic, fut, value, role in pending:
                    meta = await fut
                    coord = (topic, meta.partition, meta.offset)
                    sent[coord] = value
                    if role.startswith("valid"):
                        valid.append(coord)
                    if role == "valid-earn":
                        body = json.loads(value or b"")
                        valid_earns.append((coord, str(body["customerId"]).encode(), value or b""))
                    elif role == "forged":
                        forged.append(coord)
                    elif role.startswith("replay:"):
                        topic_, partition, offset = role.removeprefix("replay:").rsplit("/", 2)
                        replays[coord] = (topic_, int(partition), int(offset))
        finally:
            await producer.stop()
        published = time.monotonic() - started
        seen = await collector.wait_for(set(sent), timeout=420)  # ~1-2 min; more on a busy machine
        await settle(collector, 3.0)
        assert not task.done(), f"the worker stopped: {task.exception() if task.done() else ''}"
    elapsed = time.monotonic() - started

    counts = collector.count_by_input()
    assert Counter(counts[c] for c in sent) == Counter({1: len(sent)}), "an input with no or several outcomes"
    assert set(counts) == set(sent)
    codes = Counter(o.code for o in seen.values())
    assert codes[500] == 0, [o.body for o in seen.values() if o.code == 500][:5]
    bad_valid = [(c, seen[c].body) for c in valid if seen[c].code != 200]
    assert not bad_valid, bad_valid[:5]
    assert {seen[c].code for c in forged} == {809}
    assert replays and all(seen[r].body == seen[o].body for r, o in replays.items())  # its first outcome
    for outcome in seen.values():
        assert outcome.topic == (s.topic_results if outcome.code == 200 else s.topic_errors)
    # every record that was not a JSON object is in the DLQ once, with its original bytes
    not_json = {c for c, o in seen.items() if o.code == 400 and o.body["type"] is None}
    dlq = await read_dlq(s, len(not_json))
    by_input = Counter()
    for rec in dlq:
        named = {k: v.decode("utf-8") for k, v in rec.headers if k.startswith("x-input-") or k.startswith("x-error")}
        coord = (named[K.H_INPUT_TOPIC], int(named[K.H_INPUT_PARTITION]), int(named[K.H_INPUT_OFFSET]))
        by_input[coord] += 1
        assert (rec.value or b"") == (sent[coord] or b"")
        assert named[K.H_ERROR_CODE] == "400" and len(named[K.H_ERROR_MESSAGE]) <= 1024
    assert set(by_input) == not_json and set(by_input.values()) == {1}
    print(f"\n{len(sent)} records ({len(valid)} valid, {len(forged)} forged and {len(replays)} signed replays) "
          f"published in {published:.1f}s, "
          f"all outcomes in {elapsed:.1f}s; codes {dict(sorted(codes.items()))}; {len(dlq)} in the DLQ")


def valid_command(rng: random.Random, tag: str, n: int) -> tuple[str, bytes, bytes]:
    """A command that must succeed: an earn (a few shapes) or, now and then, a claim."""
    customer = 1000 + n % 300
    if rng.random() < 0.03:
        body: dict[str, Any] = {"orgId": ORG, "badgeMetaId": BADGE, "ownerType": rng.choice(["Loyalty", "journeys"]),
                                "referenceId": f"valid-{tag}-{n}"}
        return "claims", json.dumps(body).encode(), BADGE.encode()
    body = {"orgId": ORG, "requestId": f"valid-{tag}-{n}", "badgeMetaId": BADGE, "customerId": customer}
    shape = rng.random()
    if shape < 0.2:
        body["earnEventDate"] = time.time() - rng.uniform(0, 20) * DAY
    elif shape < 0.3:
        body["earnEventDate"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3 * DAY))
    elif shape < 0.4:
        body["type"] = "Earn"
    elif shape < 0.5:
        body["customerId"] = str(customer)
    elif shape < 0.55:
        body["requestId"] = f"valid-{tag}-{n}-é-\U0001f600"
    return "earns", json.dumps(body, ensure_ascii=rng.random() < 0.5).encode(), str(customer).encode()


async def settle(collector: Collector, seconds: float) -> None:
    """Keep reading for a while, so that a duplicate outcome would be seen."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await collector.poll(300)
