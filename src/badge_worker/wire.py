"""The records on the topics, as pydantic models: the source of docs/schemas/*.json and of
the AsyncAPI document (asyncapi.py).

The worker does not decode commands through these (domain/commands.py does, field by field,
so that any bytes get a precise error code); they describe what a producer should send and
what the worker writes. tests/integration/test_asyncapi_records.py checks real records of
a running worker against the generated schemas, so the two cannot drift apart unseen.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from badge_worker.domain.errors import ErrorCode
from badge_worker.domain.events import EventName
from badge_worker.domain.models import OwnerType

Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
Text = Annotated[str, Field(min_length=1, max_length=1024)]
Instant = Annotated[float | str, Field(description="epoch seconds, or an ISO-8601 date-time (naive = UTC)")]
IsoTime = Annotated[str, Field(description="ISO-8601 date-time, UTC", json_schema_extra={"format": "date-time"})]
MaybeIsoTime = Annotated[str | None, Field(description="ISO-8601 date-time, UTC; null when it never expires")]


class _Input(BaseModel):
    """Inputs: unknown fields are allowed (and ignored by the worker)."""

    model_config = ConfigDict(extra="allow")


class _Output(BaseModel):
    """Outputs: exactly these fields."""

    model_config = ConfigDict(extra="forbid")


class Activity(_Output):
    ownerType: OwnerType
    referenceId: Text


class ClaimCommand(_Input):
    """On the claims topic, keyed by badgeMetaId: a module claims (or gives up) a badge."""

    type: Literal["claim", "unclaim"] = Field("claim", description="default: claim")
    orgId: Int64
    badgeMetaId: Text
    ownerType: OwnerType
    referenceId: Text
    requestId: Text | None = Field(None, description="optional for claims; outcomes echo it")


class EarnCommand(_Input):
    """On the earns topic, keyed by customerId: issue, earn or revoke a customer's badge."""

    type: Literal["earn", "issue", "revokeEarn", "revokeIssue"] = Field("earn", description="default: earn")
    orgId: Int64
    requestId: Text = Field(description="idempotency key: one outcome per (orgId, requestId)")
    badgeMetaId: Text
    customerId: Int64
    triggeredBy: Activity | None = Field(None, description="earn/issue: the module activity behind it")
    earnEventDate: Instant | None = Field(None, description="earn: when it happened (default: the record time)")
    issueEventDate: Instant | None = Field(None, description="issue: when it happened (default: the record time)")
    issuedId: Text | None = Field(None, description="revokeIssue: only this issue (default: every active one)")
    earnedBadgeId: Text | None = Field(None, description="revokeEarn: the earned badge to revoke (mandatory)")


class Error(_Output):
    code: int = Field(description="docs/error-codes.md",
                      json_schema_extra={"enum": cast(list[JsonValue], sorted(int(c) for c in ErrorCode))})
    message: str
    detail: dict[str, Any] | None = Field(None, description="e.g. the field at fault, the limit and its count")


class Outcome(_Output):
    """The API-response envelope, one per command: on results when `errors` is empty, on
    errors otherwise. Keyed like its command."""

    type: str | None = Field(description="the command's type (null if it could not be read)")
    orgId: Int64 | None
    requestId: str | None
    data: dict[str, Any] | None = Field(description="what was done (ids of the stored documents); null on errors")
    errors: list[Error] = Field(max_length=1)
    warnings: list[Any]


class EarnConstraint(_Output):
    constraintLevel: Literal["CUSTOMER", "BADGE"]
    constraintType: str
    maxEarnLimit: int
    currentEarnCount: int
    windowStart: str | None
    windowEnd: str | None


class EarnedData(_Output):
    customerId: Int64
    badgeId: str
    earnId: str
    earnedOn: IsoTime
    earnedOnEpochMs: int
    earnEventDate: IsoTime
    earnEventDateEpochMs: int
    issuedId: str | None
    expiresOn: float | None
    expiresOnISO: MaybeIsoTime
    triggeringActivity: Activity | None
    earnConstraints: list[EarnConstraint]


class IssuedData(_Output):
    customerId: Int64
    badgeId: str
    issualId: str
    issuedOn: IsoTime
    expiresOn: float | None
    expiresOnISO: MaybeIsoTime
    triggeringActivity: Activity | None


class EarnRevokedData(_Output):
    customerId: Int64
    badgeId: str
    earnId: str
    revokedOn: IsoTime


class IssueRevokedData(_Output):
    customerId: Int64
    badgeId: str
    issualId: str
    issualIds: list[str] = Field(min_length=1)
    revokedOn: IsoTime


class _Event(_Output):
    eventId: str = Field(description="the same on every redelivery of the command: deduplicate on it")
    orgId: Int64
    createdAt: IsoTime
    requestId: str


class BadgeEarned(_Event):
    eventName: Literal[EventName.EARNED]
    data: EarnedData


class BadgeIssued(_Event):
    eventName: Literal[EventName.ISSUED]
    data: IssuedData


class BadgeEarnRevoked(_Event):
    eventName: Literal[EventName.EARN_REVOKED]
    data: EarnRevokedData


class BadgeIssueRevoked(_Event):
    eventName: Literal[EventName.ISSUE_REVOKED]
    data: IssueRevokedData


# A notification event, one per successful earn, issue or revoke; keyed by customerId.
Event = Annotated[BadgeEarned | BadgeIssued | BadgeEarnRevoked | BadgeIssueRevoked, Field(discriminator="eventName")]


class _FromInput(_Input):
    """Where an output's command came from: on every outcome, event and DLQ copy."""

    x_input_topic: str = Field(alias="x-input-topic", description="the command's topic")
    x_input_partition: str = Field(alias="x-input-partition", description="its partition (decimal)")
    x_input_offset: str = Field(alias="x-input-offset", description="its offset (decimal)")


class OutputHeaders(_FromInput):
    """Headers of every outcome and event record."""

    traceparent: str | None = Field(None, description="W3C trace context, when the command carried a valid one")
    tracestate: str | None = None
    x_truncated: str | None = Field(None, alias="x-truncated", description="an oversized record was cut")


class DlqHeaders(_FromInput):
    """Headers of a DLQ copy: the command's own headers, then these."""

    x_error_code: str = Field(alias="x-error-code", description="the outcome's error code")
    x_error_message: str = Field(alias="x-error-message")
    x_error_type: str | None = Field(None, alias="x-error-type", description="500: the exception's class")
    x_original_timestamp: str = Field(alias="x-original-timestamp", description="first delivery, epoch ms")
    x_replay_of: str | None = Field(None, alias="x-replay-of", description="a replayed copy: topic/partition/offset")


class InputHeaders(_Input):
    """Optional headers a producer may set on a command."""

    traceparent: str | None = Field(None, description="W3C trace context, carried to the outcome and event")
    tracestate: str | None = None
