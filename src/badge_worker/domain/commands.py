"""Commands in: decoding a raw Kafka value into one typed command, or a coded rejection."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from enum import StrEnum
from itertools import accumulate
from typing import Any

import orjson

from badge_worker.domain.errors import ErrorCode, Rejection, reject
from badge_worker.domain.models import OwnerType
from badge_worker.domain.outcomes import clip
from badge_worker.domain.timeutil import parse_instant

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # orgId and customerId are stored as BSON int64
MAX_TEXT = 1024  # characters of an id (requestId, badgeMetaId, referenceId, ...)
MAX_DEPTH = 100  # nesting of arrays/objects in a message; commands are two levels deep
# Event dates before this are refused: windows reach back from the event date, and must stay
# within the calendar (year 1) for any sensible window length. 1900-01-01T00:00:00Z.
MIN_EVENT_DATE = -2_208_988_800.0


class CommandType(StrEnum):
    CLAIM = "claim"
    UNCLAIM = "unclaim"
    ISSUE = "issue"
    EARN = "earn"
    REVOKE_ISSUE = "revokeIssue"
    REVOKE_EARN = "revokeEarn"


CLAIM_TOPIC_TYPES = frozenset({CommandType.CLAIM, CommandType.UNCLAIM})
EARN_TOPIC_TYPES = frozenset(
    {CommandType.ISSUE, CommandType.EARN, CommandType.REVOKE_ISSUE, CommandType.REVOKE_EARN}
)


class Stream(StrEnum):
    """Which input topic a message came from; decides the default type and allowed types."""

    CLAIMS = "claims"
    EARNS = "earns"


@dataclass(frozen=True)
class Owner:
    ownerType: OwnerType
    referenceId: str


@dataclass(frozen=True)
class Command:
    type: CommandType
    orgId: int
    badgeMetaId: str
    requestId: str | None = None
    customerId: int | None = None
    owner: Owner | None = None  # claim/unclaim owner, or earn/issue triggeredBy
    eventDate: float | None = None  # earnEventDate / issueEventDate, None = message time
    issuedId: str | None = None
    earnedBadgeId: str | None = None

    @property
    def entity_key(self) -> tuple[int, str]:
        """Commands on the same entity must be applied in partition order."""
        if self.type in CLAIM_TOPIC_TYPES:
            return (self.orgId, f"badge:{self.badgeMetaId}")
        return (self.orgId, f"customer:{self.customerId}")


@dataclass(frozen=True)
class Undecodable:
    """A message that is not a command; `orgId`/`requestId` are kept when they could be read."""

    rejection: Rejection
    orgId: int | None = None
    requestId: str | None = None  # as sent, cut to outcomes.MAX_ECHO characters
    type: str | None = None  # idem
    not_json: bool = False  # not a JSON object (or not readable at all): also copied to the DLQ


_INTEGER_TEXT = re.compile(r"\s*-?[0-9]{1,19}\s*")  # ASCII digits only, at most int64's 19


def _int_field(body: dict[str, Any], name: str) -> int:
    """An integer within int64: a JSON integer, an integral finite float, or a decimal string."""
    value = body[name]
    number: int
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(f"{name} must be an integer")
        number = int(value)
    elif isinstance(value, str) and _INTEGER_TEXT.fullmatch(value):
        number = int(value.strip())
    else:
        raise ValueError(f"{name} must be an integer")
    if not INT64_MIN <= number <= INT64_MAX:
        raise ValueError(f"{name} is out of range (a 64-bit integer)")
    return number


def _valid_text(text: str) -> bool:
    """Encodable as UTF-8: no lone surrogate (a JSON escape like \\ud800 can make one)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _str_field(body: dict[str, Any], name: str) -> str:
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{name} must be a string")
    if isinstance(value, int) and value.bit_length() > 4 * MAX_TEXT:  # str() of it would be slow
        raise ValueError(f"{name} is too long")
    text = str(value).strip()
    if not text:
        raise ValueError(f"{name} must not be empty")
    if len(text) > MAX_TEXT:
        raise ValueError(f"{name} is too long ({len(text)} characters, at most {MAX_TEXT})")
    if not _valid_text(text):
        raise ValueError(f"{name} is not valid Unicode text (a lone surrogate)")
    if "\x00" in text:  # PostgreSQL's JSONB (FerretDB's main backend) cannot store one
        raise ValueError(f"{name} must not contain a NUL character (U+0000)")
    return text


def _present(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    return value is not None and not (isinstance(value, str) and not value.strip())


def _show(value: object) -> str:
    """A short, printable rendering of an input value for a rejection message."""
    if isinstance(value, str):
        return repr(clip(value, 64))  # repr escapes lone surrogates and control characters
    return f"a {type(value).__name__}"


def _echo(value: object) -> str | None:
    """What an outcome repeats of a requestId or type it could not accept."""
    if isinstance(value, str):
        return clip(value)
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() <= 4 * MAX_TEXT:
        return clip(str(value))
    return None


def _owner(body: dict[str, Any], where: str) -> Owner | Rejection:
    if not _present(body, "ownerType"):
        return reject(ErrorCode.OWNER_TYPE_MISSING, field=f"{where}ownerType")
    if not _present(body, "referenceId"):
        return reject(ErrorCode.OWNER_ID_MISSING, field=f"{where}referenceId")
    raw_type = body["ownerType"]
    if not isinstance(raw_type, str):
        return reject(ErrorCode.INVALID_VALUE, f"ownerType must be a string, got {_show(raw_type)}",
                      field=f"{where}ownerType")
    try:
        owner_type = OwnerType.parse(raw_type) if len(raw_type) <= MAX_TEXT else None
    except ValueError:
        owner_type = None
    if owner_type is None:
        return reject(ErrorCode.INVALID_VALUE, f"unknown ownerType {_show(raw_type)}", field=f"{where}ownerType")
    try:
        reference = _str_field(body, "referenceId")
    except ValueError as exc:
        return reject(ErrorCode.INVALID_VALUE, str(exc), field=f"{where}referenceId")
    return Owner(owner_type, reference)


# Nesting depth without parsing: string literals removed, then a running count of brackets.
_STRING_LITERAL = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def nesting_depth(raw: bytes) -> int:
    """The deepest nesting of arrays/objects in a JSON text (0 when it cannot exceed MAX_DEPTH)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return 0
    brackets = _STRING_LITERAL.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


_LONG_NUMBER = re.compile(r"\d{19}")


def _loads(text: str) -> Any:
    """orjson for speed; the stdlib for what orjson refuses and JSON allows (escaped lone
    surrogates, 1e400) and for any number of 19 digits or more, which orjson would turn into
    a float beyond 64 bits: such input gets the same answer as ever."""
    if _LONG_NUMBER.search(text) is not None:
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _not_json(reason: str) -> Undecodable:
    return Undecodable(reject(ErrorCode.INVALID_VALUE, reason), not_json=True)


def decode(raw: bytes | None, stream: Stream) -> Command | Undecodable:
    """Bytes of one Kafka value -> a Command, or the rejection that explains why not.

    Never raises: any bytes give one or the other."""
    data = raw or b""
    try:
        text = data.decode("utf-8")  # strict: no UTF-16/32, no encoded surrogates (CESU-8)
    except UnicodeDecodeError:
        return _not_json("message is not valid UTF-8 JSON")
    try:
        if nesting_depth(data) > MAX_DEPTH:
            return _not_json(f"message is nested more than {MAX_DEPTH} levels deep")
        body = _loads(text.removeprefix("\ufeff"))
    except (ValueError, RecursionError):
        return _not_json("message is not valid UTF-8 JSON")
    if not isinstance(body, dict):
        return _not_json("message is not a JSON object")
    try:
        return decode_body(body, stream)
    except Exception:  # a bug here must not stop the partition: the message goes to the DLQ
        return Undecodable(reject(ErrorCode.PROCESSING_FAILED, "the message could not be decoded"),
                           orgId=None, requestId=_echo(body.get("requestId")),
                           type=_echo(body.get("type")), not_json=True)


def decode_body(body: dict[str, Any], stream: Stream) -> Command | Undecodable:
    default = CommandType.CLAIM if stream is Stream.CLAIMS else CommandType.EARN
    raw_type = body.get("type")
    request_id: str | None = None
    request_echo = _echo(body.get("requestId")) if _present(body, "requestId") else None
    org_id: int | None = None

    def fail(rejection: Rejection) -> Undecodable:
        kind = clip(raw_type) if isinstance(raw_type, str) else default.value
        return Undecodable(rejection, orgId=org_id, requestId=request_id or request_echo, type=kind)

    if _present(body, "requestId"):
        try:
            request_id = _str_field(body, "requestId")
        except ValueError as exc:
            return fail(reject(ErrorCode.INVALID_VALUE, str(exc), field="requestId"))

    if not _present(body, "orgId"):
        return fail(reject(ErrorCode.INVALID_VALUE, "orgId is mandatory", field="orgId"))
    try:
        org_id = _int_field(body, "orgId")
    except ValueError as exc:
        return fail(reject(ErrorCode.INVALID_VALUE, str(exc), field="orgId"))

    allowed = CLAIM_TOPIC_TYPES if stream is Stream.CLAIMS else EARN_TOPIC_TYPES
    if raw_type is None:
        kind = default
    else:
        match = None
        if isinstance(raw_type, str) and len(raw_type) <= MAX_TEXT:
            wanted = raw_type.strip().lower()
            match = next((t for t in CommandType if t.value.lower() == wanted), None)
        if match is None or match not in allowed:
            return fail(reject(ErrorCode.INVALID_VALUE,
                               f"type {_show(raw_type)} is not accepted on the {stream.value} topic",
                               field="type"))
        kind = match

    needs_request_id = kind in EARN_TOPIC_TYPES
    if needs_request_id and request_id is None:
        return fail(reject(ErrorCode.REQUEST_ID_MISSING, field="requestId"))
    if kind in EARN_TOPIC_TYPES and not _present(body, "customerId"):
        return fail(reject(ErrorCode.CUSTOMER_ID_MISSING, field="customerId"))

    owner: Owner | None = None
    if kind in CLAIM_TOPIC_TYPES:
        found = _owner(body, "")
        if isinstance(found, Rejection):
            return fail(found)
        owner = found
    elif body.get("triggeredBy") is not None:
        trigger = body["triggeredBy"]
        if not isinstance(trigger, dict):
            return fail(reject(ErrorCode.INVALID_VALUE, "triggeredBy must be an object",
                               field="triggeredBy"))
        found = _owner(trigger, "triggeredBy.")
        if isinstance(found, Rejection):
            return fail(found)
        owner = found

    if not _present(body, "badgeMetaId"):
        return fail(reject(ErrorCode.INVALID_VALUE, "badgeMetaId is mandatory", field="badgeMetaId"))
    try:
        badge_id = _str_field(body, "badgeMetaId")
    except ValueError as exc:
        return fail(reject(ErrorCode.INVALID_VALUE, str(exc), field="badgeMetaId"))
    customer_id: int | None = None
    if kind in EARN_TOPIC_TYPES:
        try:
            customer_id = _int_field(body, "customerId")
        except ValueError as exc:
            return fail(reject(ErrorCode.INVALID_VALUE, str(exc), field="customerId"))

    event_date: float | None = None
    date_field = {CommandType.EARN: "earnEventDate", CommandType.ISSUE: "issueEventDate"}.get(kind)
    if date_field and body.get(date_field) is not None:
        try:
            event_date = parse_instant(body[date_field])
            if event_date < MIN_EVENT_DATE:
                raise ValueError("a date before 1900-01-01 is not accepted")
        except ValueError as exc:
            return fail(reject(ErrorCode.INVALID_VALUE, f"{date_field}: {exc}", field=date_field))

    issued_id = earned_id = None
    try:
        if kind is CommandType.REVOKE_ISSUE and _present(body, "issuedId"):
            issued_id = _str_field(body, "issuedId")
        if kind is CommandType.REVOKE_EARN:
            if not _present(body, "earnedBadgeId"):
                return fail(reject(ErrorCode.INVALID_VALUE, "earnedBadgeId is mandatory",
                                   field="earnedBadgeId"))
            earned_id = _str_field(body, "earnedBadgeId")
    except ValueError as exc:
        return fail(reject(ErrorCode.INVALID_VALUE, str(exc)))

    return Command(type=kind, orgId=org_id, badgeMetaId=badge_id, requestId=request_id,
                   customerId=customer_id, owner=owner, eventDate=event_date,
                   issuedId=issued_id, earnedBadgeId=earned_id)
