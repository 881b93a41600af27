"""The error catalogue: every code the worker emits, with its message, in one place.

Codes and texts that come from the vendor's pages keep their numbers and wording;
830-832 and 500 are this project's own (CONTRACT.md section 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class ErrorCode(IntEnum):
    INVALID_VALUE = 400
    BADGE_NOT_FOUND = 404
    PROCESSING_FAILED = 500
    ISSUE_ALREADY_ACTIVE = 1040
    EVENT_TOO_FAR_IN_FUTURE = 750
    OWNER_TYPE_MISSING = 716
    OWNER_ID_MISSING = 717
    REQUEST_ID_MISSING = 804
    REQUEST_ID_REUSED = 809
    OWNER_HAS_NO_CLAIM = 810
    ISSUE_REQUIRED = 811
    CUSTOMER_ID_MISSING = 812
    EARNED_BADGE_NOT_ACTIVE = 814
    BADGE_NOT_LIVE = 815
    EVENT_OUTSIDE_VALIDITY = 816
    CUSTOMER_LIMIT_REACHED = 830
    BADGE_LIMIT_REACHED = 831
    OWNER_TYPE_NOT_ALLOWED = 832


MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.INVALID_VALUE: "Invalid enum value.",
    ErrorCode.BADGE_NOT_FOUND: "Passed badge is not found",
    ErrorCode.PROCESSING_FAILED: "The message could not be processed",
    ErrorCode.ISSUE_ALREADY_ACTIVE: "Customer already has an active issue of this badge",
    ErrorCode.EVENT_TOO_FAR_IN_FUTURE: "Event date cannot be more than 24 hours in the future",
    ErrorCode.OWNER_TYPE_MISSING: "OwnerType is mandatory.",
    ErrorCode.OWNER_ID_MISSING: "OwnerId is mandatory.",
    ErrorCode.REQUEST_ID_MISSING: "RequestId is mandatory.",
    ErrorCode.REQUEST_ID_REUSED: "Request with the same requestId is not allowed",
    ErrorCode.OWNER_HAS_NO_CLAIM: "The owner has no active claim on this badge",
    ErrorCode.ISSUE_REQUIRED: "Badge issue is mandatory before earn",
    ErrorCode.CUSTOMER_ID_MISSING: "CustomerId is mandatory.",
    ErrorCode.EARNED_BADGE_NOT_ACTIVE: "Earned badge is not active",
    ErrorCode.BADGE_NOT_LIVE: "Badge is not live",
    ErrorCode.EVENT_OUTSIDE_VALIDITY: "Event date is outside the badge validity",
    ErrorCode.CUSTOMER_LIMIT_REACHED: "Customer earn limit reached",
    ErrorCode.BADGE_LIMIT_REACHED: "Badge earn limit reached",
    ErrorCode.OWNER_TYPE_NOT_ALLOWED: "OwnerType is not allowed to own this badge",
}

# When each code is used; rendered into docs/error-codes.md by `python -m badge_worker.domain.errors`.
WHEN: dict[ErrorCode, str] = {
    ErrorCode.REQUEST_ID_MISSING: "requestId missing (issue, earn, revokeIssue, revokeEarn)",
    ErrorCode.CUSTOMER_ID_MISSING: "customerId missing",
    ErrorCode.OWNER_TYPE_MISSING: "ownerType missing (claim, unclaim, triggeredBy)",
    ErrorCode.OWNER_ID_MISSING: "referenceId (owner id) missing",
    ErrorCode.INVALID_VALUE: "a field has an invalid value (unknown enum, wrong type, bad date); "
    "a message that is not a JSON object (also copied to the DLQ)",
    ErrorCode.BADGE_NOT_FOUND: "badgeMetaId not found in this org; also an earnedBadgeId or issuedId "
    "that does not exist for this customer and badge",
    ErrorCode.REQUEST_ID_REUSED: "a new message reuses a requestId already used in this org",
    ErrorCode.OWNER_HAS_NO_CLAIM: "triggeredBy names an owner with no active claim on the badge",
    ErrorCode.ISSUE_REQUIRED: "ISSUE_EARN badge earned without an active issue for that customer",
    ErrorCode.EARNED_BADGE_NOT_ACTIVE: "revokeEarn of an earned badge that is not active",
    ErrorCode.BADGE_NOT_LIVE: "badge inactive, or processed before its startOn or after its expiresOn",
    ErrorCode.EVENT_OUTSIDE_VALIDITY: "event date outside [startOn, expiresOn] (EARN) or the "
    "issue's validity (ISSUE_EARN)",
    ErrorCode.EVENT_TOO_FAR_IN_FUTURE: "event date more than 24 h after the message timestamp",
    ErrorCode.ISSUE_ALREADY_ACTIVE: "issue while the customer already has an active issue of it",
    ErrorCode.CUSTOMER_LIMIT_REACHED: "a customerConstraints limit is reached (names the "
    "constraint, the window and when it next has room)",
    ErrorCode.BADGE_LIMIT_REACHED: "a badgeConstraints limit is reached (same details)",
    ErrorCode.OWNER_TYPE_NOT_ALLOWED: "ownerType not in ownership.restrictedToOwners",
    ErrorCode.PROCESSING_FAILED: "the message failed after bounded retries (also copied to the DLQ)",
}


@dataclass(frozen=True)
class Rejection:
    """A command refused with one catalogue code; `detail` adds machine-readable context."""

    code: ErrorCode
    message: str
    detail: dict[str, Any] = field(default_factory=dict)

    def as_error(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": int(self.code), "message": self.message}
        if self.detail:
            error["detail"] = self.detail
        return error


def reject(code: ErrorCode, extra: str | None = None, **detail: Any) -> Rejection:
    """A rejection with the catalogue message, optionally followed by a specific clause."""
    base = MESSAGES[code]
    message = base if not extra else f"{base} {extra}" if base.endswith(".") else f"{base}: {extra}"
    return Rejection(code=code, message=message, detail=dict(detail))


def markdown_table() -> str:
    rows = ["| code | message | when |", "|---|---|---|"]
    for code in sorted(ErrorCode, key=lambda c: (c.value >= 830, c.value)):
        rows.append(f"| {int(code)} | {MESSAGES[code]} | {WHEN[code]} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # pragma: no cover - docs generator
    print("# Error codes\n\nGenerated from `badge_worker.domain.errors`.\n")
    print(markdown_table())
