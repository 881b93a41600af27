"""Commands in: decoding a raw Kafka value into one typed command, or a coded rejection."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from badge_worker.domain.errors import ErrorCode, Rejection, reject
from badge_worker.domain.models import OwnerType
from badge_worker.domain.timeutil import parse_instant


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
    requestId: str | None = None
    type: str | None = None
    not_json: bool = False


def _int_field(body: dict[str, Any], name: str) -> int:
    value = body[name]
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise ValueError(f"{name} must be an integer")


def _str_field(body: dict[str, Any], name: str) -> str:
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{name} must be a string")
    text = str(value).strip()
    if not text:
        raise ValueError(f"{name} must not be empty")
    return text


def _present(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    return value is not None and not (isinstance(value, str) and not value.strip())


def _owner(body: dict[str, Any], where: str) -> Owner | Rejection:
    if not _present(body, "ownerType"):
        return reject(ErrorCode.OWNER_TYPE_MISSING, field=f"{where}ownerType")
    if not _present(body, "referenceId"):
        return reject(ErrorCode.OWNER_ID_MISSING, field=f"{where}referenceId")
    try:
        owner_type = OwnerType.parse(body["ownerType"])
    except ValueError as exc:
        return reject(ErrorCode.INVALID_VALUE, str(exc), field=f"{where}ownerType")
    try:
        reference = _str_field(body, "referenceId")
    except ValueError as exc:
        return reject(ErrorCode.INVALID_VALUE, str(exc), field=f"{where}referenceId")
    return Owner(owner_type, reference)


def decode(raw: bytes | None, stream: Stream) -> Command | Undecodable:
    """Bytes of one Kafka value -> a Command, or the rejection that explains why not."""
    try:
        body = json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError):
        return Undecodable(reject(ErrorCode.INVALID_VALUE, "message is not valid UTF-8 JSON"),
                           not_json=True)
    if not isinstance(body, dict):
        return Undecodable(reject(ErrorCode.INVALID_VALUE, "message is not a JSON object"),
                           not_json=True)
    return decode_body(body, stream)


def decode_body(body: dict[str, Any], stream: Stream) -> Command | Undecodable:
    request_id: str | None = None
    org_id: int | None = None
    if _present(body, "requestId"):
        try:
            request_id = _str_field(body, "requestId")
        except ValueError as exc:
            return Undecodable(reject(ErrorCode.INVALID_VALUE, str(exc), field="requestId"))
    raw_type = body.get("type")
    default = CommandType.CLAIM if stream is Stream.CLAIMS else CommandType.EARN

    def fail(rejection: Rejection) -> Undecodable:
        kind = raw_type if isinstance(raw_type, str) else default.value
        return Undecodable(rejection, orgId=org_id, requestId=request_id, type=kind)

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
        match = next((t for t in CommandType if isinstance(raw_type, str)
                      and t.value.lower() == raw_type.strip().lower()), None)
        if match is None or match not in allowed:
            return fail(reject(ErrorCode.INVALID_VALUE,
                               f"type {raw_type!r} is not accepted on the {stream.value} topic",
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
        customer_id = _int_field(body, "customerId") if kind in EARN_TOPIC_TYPES else None
    except ValueError as exc:
        field = "badgeMetaId" if "badgeMetaId" in str(exc) else "customerId"
        return fail(reject(ErrorCode.INVALID_VALUE, str(exc), field=field))

    event_date: float | None = None
    date_field = {CommandType.EARN: "earnEventDate", CommandType.ISSUE: "issueEventDate"}.get(kind)
    if date_field and body.get(date_field) is not None:
        try:
            event_date = parse_instant(body[date_field])
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
