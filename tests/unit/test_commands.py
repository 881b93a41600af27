import json

import pytest

from badge_worker.domain.commands import Command, CommandType, Stream, Undecodable, decode, decode_body
from badge_worker.domain.models import OwnerType
from tests.seeds import vendor_examples

EARN = {"orgId": 100458, "requestId": "r-1", "badgeMetaId": "b1", "customerId": 62090013}


def code_of(result: Command | Undecodable) -> int:
    assert isinstance(result, Undecodable), result
    return int(result.rejection.code)


def test_seed_earn_body_works_as_is_plus_org() -> None:
    body = next(o for o in vendor_examples()["issue-badge-earn"] if "earnEventDate" in o)
    cmd = decode(json.dumps({**body, "orgId": 100458}).encode(), Stream.EARNS)
    assert isinstance(cmd, Command)
    assert cmd.type is CommandType.EARN  # the default on the earns topic
    assert cmd.requestId == "2132"  # a number becomes a string
    assert cmd.customerId == 62090013
    assert cmd.owner is not None and cmd.owner.ownerType is OwnerType.LOYALTY and cmd.owner.referenceId == "123694"
    assert cmd.eventDate == pytest.approx(1699048260.192)


def test_seed_claim_body_is_a_claim() -> None:
    body = next(o for o in vendor_examples()["claim-badge"] if "ownerType" in o)
    cmd = decode_body({**body, "orgId": 1, "badgeMetaId": "653df084b3cda7078c7c68f1"}, Stream.CLAIMS)
    assert isinstance(cmd, Command) and cmd.type is CommandType.CLAIM
    assert cmd.requestId is None and cmd.entity_key == (1, "badge:653df084b3cda7078c7c68f1")


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"", None, b"[1, 2]", b'"text"', b"42"])
def test_not_a_json_object_is_400_and_goes_to_the_dlq(raw: bytes | None) -> None:
    result = decode(raw, Stream.EARNS)
    assert code_of(result) == 400
    assert isinstance(result, Undecodable) and result.not_json


@pytest.mark.parametrize(("body", "code"), [
    ({k: v for k, v in EARN.items() if k != "requestId"}, 804),
    ({**EARN, "requestId": "  "}, 804),
    ({k: v for k, v in EARN.items() if k != "customerId"}, 812),
    ({**EARN, "triggeredBy": {"referenceId": "1"}}, 716),
    ({**EARN, "triggeredBy": {"ownerType": "Loyalty"}}, 717),
    ({**EARN, "triggeredBy": {"ownerType": "Nope", "referenceId": "1"}}, 400),
    ({**EARN, "triggeredBy": "Loyalty"}, 400),
    ({**EARN, "triggeredBy": {"ownerType": "Loyalty", "referenceId": {"x": 1}}}, 400),
    ({k: v for k, v in EARN.items() if k != "orgId"}, 400),
    ({**EARN, "orgId": "acme"}, 400),
    ({**EARN, "orgId": True}, 400),
    ({**EARN, "customerId": "abc"}, 400),
    ({**EARN, "customerId": 1.5}, 400),
    ({**EARN, "requestId": {"a": 1}}, 400),
    ({**EARN, "requestId": True}, 400),
    ({**EARN, "badgeMetaId": None}, 400),
    ({**EARN, "badgeMetaId": ["b"]}, 400),
    ({**EARN, "earnEventDate": "last tuesday"}, 400),
    ({**EARN, "type": "claim"}, 400),  # not accepted on the earns topic
    ({**EARN, "type": "explode"}, 400),
    ({**EARN, "type": 7}, 400),
    ({**EARN, "type": "revokeEarn"}, 400),  # earnedBadgeId missing
    ({**EARN, "type": "revokeIssue", "issuedId": []}, 400),
])
def test_bad_earns_topic_commands_get_their_code(body: dict[str, object], code: int) -> None:
    assert code_of(decode(json.dumps(body).encode(), Stream.EARNS)) == code


def test_rejections_keep_what_could_be_read() -> None:
    result = decode_body({k: v for k, v in EARN.items() if k != "customerId"}, Stream.EARNS)
    assert isinstance(result, Undecodable)
    assert (result.orgId, result.requestId, result.type) == (100458, "r-1", "earn")


@pytest.mark.parametrize(("body", "code"), [
    ({"orgId": 1, "badgeMetaId": "b", "referenceId": "1"}, 716),
    ({"orgId": 1, "badgeMetaId": "b", "ownerType": "Loyalty"}, 717),
    ({"orgId": 1, "badgeMetaId": "b", "ownerType": "Loyalty", "referenceId": ""}, 717),
    ({"orgId": 1, "badgeMetaId": "b", "ownerType": "LOYALTEE", "referenceId": "1"}, 400),
    ({"orgId": 1, "ownerType": "Loyalty", "referenceId": "1"}, 400),
    ({"orgId": 1, "type": "earn", "badgeMetaId": "b", "ownerType": "Loyalty", "referenceId": "1"}, 400),
])
def test_bad_claims(body: dict[str, object], code: int) -> None:
    assert code_of(decode_body(body, Stream.CLAIMS)) == code


def test_every_command_type_decodes() -> None:
    unclaim = decode_body({"orgId": 1, "type": "UNCLAIM", "badgeMetaId": "b", "ownerType": "journeys",
                           "referenceId": 55}, Stream.CLAIMS)
    assert isinstance(unclaim, Command) and unclaim.type is CommandType.UNCLAIM
    assert unclaim.owner is not None and unclaim.owner.ownerType is OwnerType.JOURNEYS
    assert unclaim.owner.referenceId == "55"
    issue = decode_body({**EARN, "type": "issue", "issueEventDate": 1716803487}, Stream.EARNS)
    assert isinstance(issue, Command) and issue.type is CommandType.ISSUE and issue.eventDate == 1716803487.0
    revoke_issue = decode_body({**EARN, "type": "revokeIssue"}, Stream.EARNS)
    assert isinstance(revoke_issue, Command) and revoke_issue.issuedId is None
    revoke_issue = decode_body({**EARN, "type": "revokeissue", "issuedId": "abc"}, Stream.EARNS)
    assert isinstance(revoke_issue, Command) and revoke_issue.issuedId == "abc"
    revoke_earn = decode_body({**EARN, "type": "revokeEarn", "earnedBadgeId": "e1"}, Stream.EARNS)
    assert isinstance(revoke_earn, Command) and revoke_earn.earnedBadgeId == "e1"
    assert revoke_earn.entity_key == (100458, "customer:62090013")
    numeric = decode_body({**EARN, "customerId": "62090013", "orgId": 100458.0, "earnEventDate": None},
                          Stream.EARNS)
    assert isinstance(numeric, Command) and numeric.customerId == 62090013 and numeric.eventDate is None


# ---------------------------------------------------------------- the fault boundary (issue 7)
# Whatever the bytes of a record, decode() gives one Command or one coded rejection, and the
# outcome built from it always encodes to a small, valid UTF-8 JSON record.

from typing import Any  # noqa: E402

from hypothesis import HealthCheck, given  # noqa: E402
from hypothesis import settings as hsettings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from badge_worker.adapters.kafka_io import encode  # noqa: E402
from badge_worker.domain.commands import MAX_DEPTH, MAX_TEXT, nesting_depth  # noqa: E402
from badge_worker.domain.errors import ErrorCode  # noqa: E402
from badge_worker.domain.outcomes import MAX_ECHO, envelope  # noqa: E402

ONE_MB = 1024 * 1024
CLAIM = {"orgId": 100458, "badgeMetaId": "b1", "ownerType": "Loyalty", "referenceId": "p-1"}
STRING_FIELDS = ["requestId", "type", "badgeMetaId", "earnedBadgeId", "issuedId", "earnEventDate", "issueEventDate"]


def outcome_of(result: Command | Undecodable) -> dict[str, Any]:
    """The outcome the processor would publish for this decode result (success: every field echoed)."""
    if isinstance(result, Undecodable):
        return envelope(result.type, result.orgId, result.requestId, None, result.rejection)
    owner = None if result.owner is None else {"ownerType": result.owner.ownerType.value,
                                               "referenceId": result.owner.referenceId}
    data = {"badgeMetaId": result.badgeMetaId, "customerId": result.customerId, "requestId": result.requestId,
            "issuedId": result.issuedId, "earnedBadgeId": result.earnedBadgeId, "owner": owner,
            "eventDate": result.eventDate}
    return envelope(result.type.value, result.orgId, result.requestId, data)


def assert_publishable(result: Command | Undecodable) -> bytes:
    out = encode(outcome_of(result))
    assert len(out) < ONE_MB
    assert isinstance(json.loads(out.decode("utf-8")), dict)  # strict UTF-8, valid JSON
    if isinstance(result, Undecodable):
        assert result.rejection.code is not ErrorCode.PROCESSING_FAILED  # decode never fails itself
    return out


def raw_json(body: object) -> bytes:
    """JSON bytes as a producer would send them; lone surrogates travel as \\udXXX escapes."""
    return json.dumps(body, ensure_ascii=True).encode()


@pytest.mark.parametrize("raw", [
    b"[" * 100_000,
    b"[" * 1000,
    b"{" * 1000,
    b'{"a":' * 1000 + b"1" + b"}" * 1000,
    b'{"orgId": 1, "x": ' + b"[" * 101 + b"]" * 101 + b"}",  # nesting anywhere, even in unknown fields
    b'{"orgId": 1, "requestId": "r", "badgeMetaId": "x", "customerId": 1, "x": ' + b"{\"a\":" * 500 + b"1" +
    b"}" * 500 + b"}",
])
def test_deep_nesting_is_400_not_a_recursion_error(raw: bytes) -> None:
    result = decode(raw, Stream.EARNS)
    assert code_of(result) == 400
    assert isinstance(result, Undecodable) and result.not_json
    assert_publishable(result)


def test_nesting_inside_strings_does_not_count() -> None:
    deep_text = "[" * 5000 + '\\"{' * 100
    body = {**EARN, "note": deep_text}
    assert nesting_depth(json.dumps(body).encode()) == 1
    assert isinstance(decode(json.dumps(body).encode(), Stream.EARNS), Command)
    assert nesting_depth(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)) == MAX_DEPTH + 1
    at_limit = {**EARN, "x": json.loads("[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1))}
    assert isinstance(decode(json.dumps(at_limit).encode(), Stream.EARNS), Command)
    assert isinstance(decode(json.dumps({**EARN, "x": [[[[1]]]]}).encode(), Stream.EARNS), Command)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"])
def test_json_that_is_not_utf8_is_400_and_goes_to_the_dlq(encoding: str) -> None:
    result = decode(json.dumps(EARN).encode(encoding), Stream.EARNS)
    assert code_of(result) == 400
    assert isinstance(result, Undecodable) and result.not_json


def test_a_utf8_byte_order_mark_is_still_utf8() -> None:
    assert isinstance(decode(b"\xef\xbb\xbf" + json.dumps(EARN).encode(), Stream.EARNS), Command)


@pytest.mark.parametrize("raw", [
    b'{"orgId": 1, "requestId": "r\xed\xa0\x80", "badgeMetaId": "x", "customerId": 1}',  # CESU-8 surrogate
    b'{"orgId": 1, "requestId": "r\xc0\xaf", "badgeMetaId": "x", "customerId": 1}',  # overlong
    b'{"orgId": 1, "requestId": "r\xff", "badgeMetaId": "x", "customerId": 1}',
])
def test_invalid_utf8_bytes_are_400_and_go_to_the_dlq(raw: bytes) -> None:
    result = decode(raw, Stream.EARNS)
    assert code_of(result) == 400
    assert isinstance(result, Undecodable) and result.not_json
    assert_publishable(result)


LONE = ["\ud800", "a\udfffb", "\udc00\ud800", "x" * 10 + "\ud83d"]


@pytest.mark.parametrize("text", LONE)
@pytest.mark.parametrize(("stream", "base", "field"), [
    (Stream.EARNS, EARN, "requestId"),
    (Stream.EARNS, EARN, "type"),
    (Stream.EARNS, EARN, "badgeMetaId"),
    (Stream.EARNS, EARN, "customerId"),
    (Stream.EARNS, EARN, "orgId"),
    (Stream.EARNS, EARN, "earnEventDate"),
    (Stream.EARNS, {**EARN, "type": "issue"}, "issueEventDate"),
    (Stream.EARNS, {**EARN, "type": "revokeEarn"}, "earnedBadgeId"),
    (Stream.EARNS, {**EARN, "type": "revokeIssue"}, "issuedId"),
    (Stream.EARNS, {**EARN, "triggeredBy": {"ownerType": "Loyalty", "referenceId": "p"}}, "triggeredBy.referenceId"),
    (Stream.EARNS, {**EARN, "triggeredBy": {"ownerType": "Loyalty", "referenceId": "p"}}, "triggeredBy.ownerType"),
    (Stream.CLAIMS, CLAIM, "referenceId"),
    (Stream.CLAIMS, CLAIM, "ownerType"),
    (Stream.CLAIMS, CLAIM, "badgeMetaId"),
    (Stream.CLAIMS, CLAIM, "requestId"),
])
def test_a_lone_surrogate_in_any_field_is_400_and_the_outcome_encodes(
        text: str, stream: Stream, base: dict[str, Any], field: str) -> None:
    body = json.loads(json.dumps(base))
    where = body
    if field.startswith("triggeredBy."):
        where, field = body["triggeredBy"], field.split(".", 1)[1]
    where[field] = text
    result = decode(raw_json(body), stream)
    assert code_of(result) == 400
    out = assert_publishable(result)
    assert b"\xed" not in out  # no encoded surrogate in the outcome: U+FFFD instead


@pytest.mark.parametrize(("stream", "base", "field"), [
    (Stream.EARNS, EARN, "requestId"),
    (Stream.EARNS, EARN, "badgeMetaId"),
    (Stream.EARNS, {**EARN, "type": "revokeEarn"}, "earnedBadgeId"),
    (Stream.EARNS, {**EARN, "type": "revokeIssue"}, "issuedId"),
    (Stream.EARNS, {**EARN, "triggeredBy": {"ownerType": "Loyalty", "referenceId": "p"}}, "triggeredBy.referenceId"),
    (Stream.CLAIMS, CLAIM, "referenceId"),
])
def test_a_nul_character_in_an_id_is_400_naming_the_field(stream: Stream, base: dict[str, Any], field: str) -> None:
    """PostgreSQL's JSONB cannot store U+0000: stored ids are refused it, on every store alike."""
    body = json.loads(json.dumps(base))
    where, name = (body["triggeredBy"], "referenceId") if field.startswith("triggeredBy.") else (body, field)
    where[name] = "a\u0000b"
    result = decode(raw_json(body), stream)
    assert code_of(result) == 400
    assert isinstance(result, Undecodable) and "NUL" in result.rejection.message
    assert_publishable(result)


def test_a_surrogate_pair_escape_is_one_valid_character() -> None:
    result = decode(b'{"orgId": 1, "requestId": "r\\ud83d\\ude00", "badgeMetaId": "x", "customerId": 1}', Stream.EARNS)
    assert isinstance(result, Command) and result.requestId == "r\U0001f600"


@pytest.mark.parametrize("field", ["requestId", "type", "badgeMetaId", "earnedBadgeId"])
def test_a_huge_string_is_400_and_its_echo_is_cut(field: str) -> None:
    body = {**EARN, "type": "revokeEarn", "earnedBadgeId": "e", field: "é" * 1_000_000}
    result = decode(json.dumps(body, ensure_ascii=False).encode(), Stream.EARNS)
    assert code_of(result) == 400
    out = assert_publishable(result)
    assert len(out) < 8 * MAX_ECHO
    assert isinstance(result, Undecodable)
    if field in ("requestId", "type"):
        echoed = json.loads(out)[field]
        assert echoed.startswith("é" * (MAX_ECHO - 40)) and echoed.endswith("…[truncated, 1000000 characters]")
        assert len(echoed) == MAX_ECHO


def test_ids_up_to_the_limit_are_accepted() -> None:
    result = decode_body({**EARN, "requestId": "r" * MAX_TEXT, "badgeMetaId": "b" * MAX_TEXT}, Stream.EARNS)
    assert isinstance(result, Command) and result.requestId == "r" * MAX_TEXT
    assert code_of(decode_body({**EARN, "requestId": "r" * (MAX_TEXT + 1)}, Stream.EARNS)) == 400


@pytest.mark.parametrize("field", ["orgId", "customerId"])
@pytest.mark.parametrize("value", [
    2**63, -(2**63) - 1, 2**70, 10**400, 1e308, -1e308, 1e19, float("nan"), float("inf"), float("-inf"),
    "9223372036854775808", "99999999999999999999999", "١٢٣", "--5", "1_000", "0x10", "1e3", " ", [], {}, True,
])
def test_integers_outside_int64_or_not_integers_are_400(field: str, value: object) -> None:
    result = decode_body({**EARN, field: value}, Stream.EARNS)
    assert isinstance(result, Undecodable)
    assert result.rejection.code in (ErrorCode.INVALID_VALUE, ErrorCode.CUSTOMER_ID_MISSING)
    assert_publishable(result)


@pytest.mark.parametrize("field", ["orgId", "customerId"])
@pytest.mark.parametrize(("value", "expected"), [
    (2**63 - 1, 2**63 - 1), (-(2**63), -(2**63)), (" 42 ", 42), ("-7", -7), (5.0, 5), (0, 0),
])
def test_integers_within_int64_are_accepted(field: str, value: object, expected: int) -> None:
    result = decode_body({**EARN, field: value}, Stream.EARNS)
    assert isinstance(result, Command)
    assert getattr(result, field) == expected


@pytest.mark.parametrize("raw", [
    b'{"orgId": 1, "requestId": "r", "badgeMetaId": "x", "customerId": 1, "earnEventDate": ' + b"9" * 400 + b"}",
    b'{"orgId": 1, "requestId": "r", "badgeMetaId": "x", "customerId": 1, "earnEventDate": -' + b"9" * 400 + b"}",
    b'{"orgId": 1, "requestId": "r", "badgeMetaId": "x", "customerId": 1, "earnEventDate": 1e400}',
    b'{"orgId": 1, "requestId": "r", "badgeMetaId": "x", "customerId": 1, "earnEventDate": NaN}',
    b'{"orgId": 1, "requestId": "r", "badgeMetaId": "x", "customerId": 1, "earnEventDate": -Infinity}',
    b'{"orgId": 1, "requestId": "r", "badgeMetaId": "x", "customerId": 1, "earnEventDate": "' + b"9" * 400 + b'"}',
    b'{"orgId": 1, "requestId": "r", "badgeMetaId": "x", "customerId": 1, "earnEventDate": "0001-01-01T00:00+01:00"}',
    b'{"orgId": 1, "requestId": "r", "badgeMetaId": "x", "customerId": 1, "earnEventDate": "1899-12-31T23:59:59Z"}',
    b'{"orgId": 1, "requestId": "r", "badgeMetaId": "x", "customerId": 1, "earnEventDate": [[1]]}',
    b'{"orgId": 1, "requestId": "r", "badgeMetaId": "x", "customerId": 1, "earnEventDate": {"$date": 1}}',
    b'{"orgId": 1, "type": "issue", "requestId": "r", "badgeMetaId": "x", "customerId": 1, "issueEventDate": 1e300}',
])
def test_impossible_event_dates_are_400(raw: bytes) -> None:
    result = decode(raw, Stream.EARNS)
    assert code_of(result) == 400
    assert isinstance(result, Undecodable) and not result.not_json
    assert_publishable(result)


@pytest.mark.parametrize(("stream", "body"), [
    (Stream.EARNS, {**EARN, "type": "x" * 5000}),
    (Stream.EARNS, {**EARN, "type": ["earn"] * 1000}),
    (Stream.EARNS, {**EARN, "triggeredBy": {"ownerType": "L" * 1_000_000, "referenceId": "p"}}),
    (Stream.EARNS, {**EARN, "triggeredBy": {"ownerType": {"a": [1] * 100_000}, "referenceId": "p"}}),
    (Stream.CLAIMS, {**CLAIM, "referenceId": "p" * 1_000_000}),
    (Stream.EARNS, {**EARN, "requestId": 10**4000}),
    (Stream.EARNS, {**EARN, "badgeMetaId": 10**2000}),
])
def test_rejection_messages_never_repeat_a_huge_value(stream: Stream, body: dict[str, Any]) -> None:
    result = decode_body(body, stream)
    assert code_of(result) == 400
    assert isinstance(result, Undecodable)
    assert len(result.rejection.message) < 300
    assert len(assert_publishable(result)) < 8 * MAX_ECHO


def test_a_numeric_request_id_is_still_a_string() -> None:
    result = decode_body({**EARN, "requestId": 12345678901234567890}, Stream.EARNS)
    assert isinstance(result, Command) and result.requestId == "12345678901234567890"


# ---- properties

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
WILD_TEXT = st.text(st.characters(exclude_categories=()), max_size=30) | st.text(SURROGATES, min_size=1, max_size=3)
NUMBERS = st.one_of(
    st.integers(), st.integers(min_value=-(2**80), max_value=2**80),
    st.integers(min_value=-(2**1000), max_value=2**1000),
    st.floats(), st.sampled_from([2**63, 2**63 - 1, -(2**63), -(2**63) - 1, 1e308, 0, -0.0, 1699048260.192]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, WILD_TEXT,
                    st.sampled_from(["earn", "issue", "revokeEarn", "revokeIssue", "claim", "unclaim", "Loyalty",
                                     "journeys", "b1", "2024-01-01T00:00:00Z", "1716803487", " ", ""]))
JSONISH = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(WILD_TEXT, inner,
                                                                                            max_size=4),
                       max_leaves=12)
FIELD_NAMES = ["orgId", "requestId", "type", "badgeMetaId", "customerId", "earnEventDate", "issueEventDate",
               "issuedId", "earnedBadgeId", "ownerType", "referenceId", "triggeredBy"]
BODIES = st.fixed_dictionaries(
    {}, optional={name: JSONISH | st.fixed_dictionaries({}, optional={"ownerType": JSONISH, "referenceId": JSONISH})
                  if name == "triggeredBy" else JSONISH for name in FIELD_NAMES},
).map(lambda extra: {**EARN, **extra}) | st.dictionaries(WILD_TEXT | st.sampled_from(FIELD_NAMES), JSONISH, max_size=8)


@hsettings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES, stream=st.sampled_from(list(Stream)))
def test_any_json_object_decodes_to_a_command_or_a_rejection_that_publishes(
        body: dict[str, Any], stream: Stream) -> None:
    direct = decode_body(body, stream)
    try:
        raw = raw_json(body)
    except ValueError:  # an integer of more than 4300 digits: json.dumps refuses it too
        return
    result = decode(raw, stream)
    assert isinstance(result, Command | Undecodable)
    assert_publishable(direct)
    assert_publishable(result)
    if isinstance(result, Command):  # what a command carries can be stored and published as it is
        for text in (result.requestId, result.badgeMetaId, result.issuedId, result.earnedBadgeId):
            assert text is None or (0 < len(text) <= MAX_TEXT and text.encode("utf-8"))
        assert -(2**63) <= result.orgId < 2**63
        assert result.customerId is None or -(2**63) <= result.customerId < 2**63


@hsettings(max_examples=600, deadline=None)
@given(raw=st.binary(max_size=600) | st.builds(lambda head, junk, tail: head + junk + tail,
                                               st.sampled_from([b"", b'{"orgId": 1, "requestId": "', b"[" * 150,
                                                                json.dumps(EARN).encode()[:-1]]),
                                               st.binary(max_size=200),
                                               st.sampled_from([b"", b'"}', b"}", b"]" * 150])),
       stream=st.sampled_from(list(Stream)))
def test_any_bytes_decode_without_raising_and_publish(raw: bytes, stream: Stream) -> None:
    assert_publishable(decode(raw, stream))


@pytest.mark.parametrize("raw", [
    b'{"orgId": -9223372036854775809, "requestId": "r", "badgeMetaId": "b", "customerId": 1}',
    b'{"orgId": 1, "requestId": "r", "badgeMetaId": "b", "customerId": 123456789012345678901234567890}',
    b'{"orgId": 1, "requestId": 123456789012345678901234567890, "badgeMetaId": "b", "customerId": 1}',
    b'{"orgId": 1, "requestId": "r", "badgeMetaId": "b", "customerId": 9223372036854775807}',
])
def test_long_numbers_decode_as_exactly_as_the_stdlib_reads_them(raw: bytes) -> None:
    """orjson reads integers beyond 64 bits as floats; the decoder must not (a customerId or
    orgId rounded to a float would land on another customer)."""
    got = decode(raw, Stream.EARNS)
    expected = decode_body(json.loads(raw), Stream.EARNS)
    assert type(got) is type(expected)
    if isinstance(got, Undecodable):
        assert isinstance(expected, Undecodable) and got.rejection == expected.rejection
    else:
        assert isinstance(expected, Command)
        assert (got.orgId, got.customerId, got.requestId) == (expected.orgId, expected.customerId, expected.requestId)
