"""The worker's view of a record: which replay headers it trusts, and what it writes back
(outcome and DLQ headers, outcome bytes) whatever the record carried."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from badge_worker import constants as K
from badge_worker import replay_marks
from badge_worker.adapters.kafka_io import MAX_OUTCOME_BYTES, dlq_headers, encode, outcome_headers, to_input
from badge_worker.domain.commands import Stream
from badge_worker.domain.errors import ErrorCode, reject
from badge_worker.domain.outcomes import MAX_ECHO, clip, envelope
from badge_worker.service import messages
from badge_worker.service.messages import InputRecord, Result
from badge_worker.settings import Settings

SECRET = b"s3cret"
KEY, VALUE = b"42", b'{"orgId": 1, "requestId": "r", "badgeMetaId": "b", "customerId": 42}'
ORIGIN, ORIGINAL_TS = "badges.earns/3/17", "1700000000123"
OWN_TS = 1800000000456


def record(headers: list[tuple[str, bytes]], *, secret: bytes | None = SECRET, key: bytes | None = KEY,
           value: bytes | None = VALUE) -> InputRecord:
    return InputRecord("badges.earns", 1, 99, key, value, tuple(headers), OWN_TS, Stream.EARNS,
                       replay_secret=secret)


def signed(origin: str = ORIGIN, original_ts: str = ORIGINAL_TS, *, key: bytes | None = KEY,
           value: bytes | None = VALUE, secret: bytes = SECRET) -> list[tuple[str, bytes]]:
    signature = replay_marks.sign(secret, origin, original_ts, key, value)
    return [(K.H_REPLAY_OF, origin.encode()), (K.H_ORIGINAL_TIMESTAMP, original_ts.encode()),
            (K.H_REPLAY_SIGNATURE, signature.encode())]


def is_own(rec: InputRecord) -> bool:
    return rec.origin == "badges.earns/1/99" and rec.now == OWN_TS / 1000 and rec.replay_mark is None


# ---------------------------------------------------------------- replay marks

def test_a_signed_replay_is_the_original_message() -> None:
    rec = record(signed())
    assert rec.origin == ORIGIN
    assert rec.now == 1700000000.123
    assert rec.replay_mark is not None and rec.replay_mark.original_ts == ORIGINAL_TS


def test_a_signed_replay_without_original_timestamp_keeps_its_own_time() -> None:
    signature = replay_marks.sign(SECRET, ORIGIN, "", KEY, VALUE)
    rec = record([(K.H_REPLAY_OF, ORIGIN.encode()), (K.H_REPLAY_SIGNATURE, signature.encode())])
    assert rec.origin == ORIGIN and rec.now == OWN_TS / 1000


def test_without_a_secret_replay_headers_are_never_trusted() -> None:
    assert is_own(record(signed(), secret=None))
    assert is_own(record(signed(), secret=b""))


@pytest.mark.parametrize("headers", [
    pytest.param([(K.H_REPLAY_OF, ORIGIN.encode()), (K.H_ORIGINAL_TIMESTAMP, ORIGINAL_TS.encode())], id="unsigned"),
    pytest.param(signed(secret=b"another key"), id="another-key"),
    pytest.param(signed(value=b"{}"), id="another-value"),
    pytest.param(signed(key=b"43"), id="another-key-bytes"),
    pytest.param(signed(key=None), id="no-key-signed"),
    pytest.param([(K.H_REPLAY_OF, b"badges.earns/0/1"), *signed()[1:]], id="origin-swapped"),
    pytest.param([signed()[0], (K.H_ORIGINAL_TIMESTAMP, b"1"), signed()[2]], id="timestamp-swapped"),
    pytest.param([signed()[0], signed()[2]], id="timestamp-dropped"),
    pytest.param([*signed(), (K.H_REPLAY_OF, b"badges.earns/0/1")], id="origin-twice"),
    pytest.param([*signed(), (K.H_ORIGINAL_TIMESTAMP, ORIGINAL_TS.encode())], id="timestamp-twice"),
    pytest.param([*signed(), signed()[2]], id="signature-twice"),
    pytest.param([*signed()[:2], (K.H_REPLAY_SIGNATURE, b"")], id="empty-signature"),
    pytest.param([*signed()[:2], (K.H_REPLAY_SIGNATURE, "é".encode() * 32)], id="non-ascii-signature"),
    pytest.param([*signed()[:2], (K.H_REPLAY_SIGNATURE, b"\xff\xfe" * 32)], id="binary-signature"),
    pytest.param([*signed()[:2], (K.H_REPLAY_SIGNATURE, b"0" * 100_000)], id="huge-signature"),
    pytest.param([(K.H_REPLAY_OF, b"\xff\xfe/1/2"), *signed()[1:]], id="binary-origin"),
    pytest.param([(K.H_REPLAY_OF, b""), *signed()[1:]], id="empty-origin"),
    pytest.param([(K.H_REPLAY_OF, b"\xed\xa0\x80"), (K.H_REPLAY_SIGNATURE, b"\xed\xa0\x80")], id="cesu8"),
])
def test_a_forged_or_altered_replay_mark_is_ignored(headers: list[tuple[str, bytes]]) -> None:
    assert is_own(record(headers))


@pytest.mark.parametrize("original_ts", [
    "", "abc", "-5", "1e12", "1_700_000_000_000", " 1700000000123", "١٢٣", "12.5", "9" * 16, "9" * 400,
    "253402300800000", "\ud800",
])
def test_a_signed_but_impossible_original_timestamp_never_raises(original_ts: str) -> None:
    value = original_ts.encode("utf-8", "surrogatepass")
    signature = replay_marks.sign(SECRET, ORIGIN, original_ts, KEY, VALUE)
    rec = record([(K.H_REPLAY_OF, ORIGIN.encode()), (K.H_ORIGINAL_TIMESTAMP, value),
                  (K.H_REPLAY_SIGNATURE, signature.encode())])
    assert rec.now == OWN_TS / 1000
    assert rec.origin in (ORIGIN, "badges.earns/1/99")  # trusted if valid UTF-8 and signed
    assert rec.original_timestamp_ms == OWN_TS


def test_the_largest_original_timestamp_is_accepted() -> None:
    rec = record(signed(original_ts="253402300799999"))
    assert rec.now == 253402300799.999


@pytest.mark.parametrize("value", [b"\xff", b"\xed\xa0\x80", b"\x00", b"", b"x" * 100_000])
def test_junk_header_values_never_raise(value: bytes) -> None:
    rec = record([(K.H_REPLAY_OF, value), (K.H_ORIGINAL_TIMESTAMP, value), (K.H_REPLAY_SIGNATURE, value),
                  ("other", value)])
    assert is_own(rec)
    assert rec.header("other") == value.decode("utf-8", "replace")
    assert rec.header("missing") is None


# ---------------------------------------------------------------- to_input

def consumer_record(headers: Any, *, timestamp: int = OWN_TS) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("t.earns", 2, 5, timestamp, 0, KEY, VALUE, None, len(KEY), len(VALUE), headers)


def test_to_input_passes_the_secret_and_maps_null_header_values() -> None:
    s = Settings(topic_claims="t.claims", topic_earns="t.earns")
    headers = [("a", None), *signed()]
    plain = to_input(consumer_record(headers), s)
    assert plain.stream is Stream.EARNS and plain.headers[0] == ("a", b"") and plain.replay_mark is None
    trusted = to_input(consumer_record(headers), s, SECRET)
    assert trusted.origin == ORIGIN and trusted.now == 1700000000.123
    assert to_input(consumer_record(None), s).headers == ()


# ---------------------------------------------------------------- outcome and DLQ headers

def dlq_result(rec: InputRecord, *, error_type: str | None = None, reason: str | None = None) -> Result:
    outcome = envelope("earn", 1, "r", None, reject(ErrorCode.PROCESSING_FAILED, "failed 3 times"))
    return Result(rec, outcome, to_dlq=True, error_type=error_type, error_reason=reason)


OURS = {K.H_INPUT_TOPIC, K.H_INPUT_PARTITION, K.H_INPUT_OFFSET, K.H_ERROR_CODE, K.H_ERROR_MESSAGE, K.H_ERROR_TYPE,
        K.H_ORIGINAL_TIMESTAMP, K.H_REPLAY_OF, K.H_REPLAY_SIGNATURE}


def as_dict(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    """The headers the worker writes; strict: each of them is UTF-8."""
    return {k: v.decode("utf-8") for k, v in headers if k in OURS}


def test_outcome_headers_name_the_input() -> None:
    assert as_dict(outcome_headers(record([]))) == {
        K.H_INPUT_TOPIC: "badges.earns", K.H_INPUT_PARTITION: "1", K.H_INPUT_OFFSET: "99"}


def test_a_500_carries_its_exception_type_and_reason_in_the_dlq_headers() -> None:
    rec = record([("trace", b"\xff\x00")])
    named = as_dict(dlq_headers(dlq_result(rec, error_type="KeyError", reason="'customerConstraints'")))
    assert named[K.H_ERROR_CODE] == "500"
    assert named[K.H_ERROR_TYPE] == "KeyError"
    assert named[K.H_ERROR_MESSAGE] == "'customerConstraints'"
    assert named[K.H_ORIGINAL_TIMESTAMP] == str(OWN_TS)
    assert named[K.H_INPUT_OFFSET] == "99"
    assert (("trace", b"\xff\x00") in dlq_headers(dlq_result(rec)))  # the producer's own headers are kept
    assert K.H_REPLAY_OF not in named


def test_a_rejection_without_exception_has_its_message_and_no_type() -> None:
    rec = record([])
    outcome = envelope(None, None, None, None, reject(ErrorCode.INVALID_VALUE, "message is not valid UTF-8 JSON"))
    named = as_dict(dlq_headers(Result(rec, outcome, to_dlq=True)))
    assert named[K.H_ERROR_CODE] == "400" and "UTF-8" in named[K.H_ERROR_MESSAGE]
    assert K.H_ERROR_TYPE not in named


def test_dlq_error_headers_are_bounded_and_encodable() -> None:
    rec = record([])
    result = dlq_result(rec, error_type="E\ud800" * 10_000, reason="bad \udc00 thing " * 100_000)
    headers = dlq_headers(result)
    named = as_dict(headers)
    assert len(named[K.H_ERROR_MESSAGE]) <= 1024 and "\ufffd" in named[K.H_ERROR_MESSAGE]
    assert len(named[K.H_ERROR_TYPE]) <= 256
    assert sum(len(v) for _, v in headers) < 8 * 1024


def test_forged_replay_headers_do_not_reach_the_dlq_but_a_signed_replay_keeps_its_origin() -> None:
    forged = record([(K.H_REPLAY_OF, b"badges.earns/0/1"), (K.H_ORIGINAL_TIMESTAMP, b"junk"),
                     (K.H_REPLAY_SIGNATURE, b"00"), (K.H_ERROR_CODE, b"200")])
    headers = dlq_headers(dlq_result(forged))
    keys = [k for k, _ in headers]
    assert K.H_REPLAY_OF not in keys and K.H_REPLAY_SIGNATURE not in keys
    assert keys.count(K.H_ERROR_CODE) == 1 and keys.count(K.H_ORIGINAL_TIMESTAMP) == 1
    assert as_dict(headers)[K.H_ORIGINAL_TIMESTAMP] == str(OWN_TS)

    replay = as_dict(dlq_headers(dlq_result(record(signed()))))
    assert replay[K.H_REPLAY_OF] == ORIGIN and replay[K.H_ORIGINAL_TIMESTAMP] == ORIGINAL_TS
    assert K.H_REPLAY_SIGNATURE not in replay  # `dlq replay` signs again what it sends


# ---------------------------------------------------------------- encode

def test_encode_is_compact_utf8_json() -> None:
    outcome = envelope("earn", 1, "r-é", {"expiresOn": 1.5})
    assert encode(outcome) == json.dumps(outcome, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize("outcome", [
    envelope("\ud800", 1, "r\udfff", None, reject(ErrorCode.INVALID_VALUE, "x\ud83d")),
    {"type": "earn", "data": {"n": float("nan"), "i": float("-inf"), "big": 10**5000, "obj": object()}},
    {"type": "earn", "data": {"list": list(range(1_000_000))}},
    {"type": "earn", "requestId": "r" * 5_000_000, "data": {"k" * 2_000_000: "v"}},
    {"type": "earn", "data": {"deep": json.loads("[" * 50 + "]" * 50)}},
])
def test_encode_never_raises_and_stays_small(outcome: dict[str, Any]) -> None:
    data = encode(outcome)
    assert len(data) <= MAX_OUTCOME_BYTES
    body = json.loads(data.decode("utf-8"))
    assert body["type"] in ("earn", "\ufffd")


def test_encode_replaces_lone_surrogates_and_keeps_pairs() -> None:
    body = json.loads(encode({"requestId": "a\ud800b\U0001f600"}).decode("utf-8"))
    assert body["requestId"] == "a\ufffdb\U0001f600"


def test_clip_is_bounded_and_idempotent() -> None:
    assert clip("short") == "short"
    cut = clip("x" * 5000)
    assert len(cut) == MAX_ECHO and cut.endswith("…[truncated, 5000 characters]")
    assert clip(cut) == cut
    assert envelope("t" * 5000, 1, "r" * 5000, None)["requestId"] == cut.replace("x", "r")


def test_a_header_name_utf8_cannot_hold_is_repaired_in_the_dlq_copy() -> None:
    rec = record([("bad\udcff", b"v"), ("good", b"w")])
    headers = dlq_headers(dlq_result(rec))
    assert ("bad\ufffd", b"v") in headers and ("good", b"w") in headers
    for name, _ in headers:
        name.encode("utf-8")


def test_an_outcome_cut_for_size_says_so() -> None:
    outcome = envelope("revokeIssue", 1, "r", {"revokedIssuedIds": ["0" * 24] * 100_000})
    body = json.loads(encode(outcome))
    assert body["warnings"] == ["the outcome was too large to publish and was cut"]
    assert body["type"] == "revokeIssue" and body["requestId"] == "r"
    clean = json.loads(encode(envelope("earn", 1, "r\ud800", None)))  # replaced, not cut: no warning
    assert clean["warnings"] == [] and clean["requestId"] == "r\ufffd"


def test_encode_survives_a_broken_str() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

    body = json.loads(encode({"type": "earn", "data": {"x": Broken()}}))
    assert body["data"] == {"x": "<Broken>"}


# ---------------------------------------------------------------- what is kept of a batch

def test_every_decided_outcome_is_kept_and_only_an_earned_badge_needs_no_document() -> None:
    def result(code: int | None, **extra: Any) -> Result:
        rejection = reject(ErrorCode(code), "no") if code is not None else None
        return Result(record([]), envelope("earn", 1, "r", None if rejection else {"n": 1}, rejection), **extra)

    earned = result(None, ledger="e", from_earned_badge=True)
    issued = result(None, ledger="i")
    refused = result(830, ledger="f")
    batch = [earned, issued, refused, result(500, ledger="x"), result(None, ledger="p", replayed=True),
             result(804)]  # a 500, a replay and a command without a requestId are not kept
    assert messages.decided(batch) == [earned, issued, refused]
    assert messages.outcome_documents(messages.decided(batch)) == [
        ("i", issued.outcome, "badges.earns/1/99"), ("f", refused.outcome, "badges.earns/1/99")]
