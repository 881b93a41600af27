"""Notification events (CONTRACT.md section 7, docs/events.md): one per successful earn, issue,
revokeEarn and revokeIssue, built here without I/O.

Every field is a function of the command, of what it stored and of its message time, so that
a rerun of the same message (a redelivery, a resume after a crash) builds the same event, and
`eventId` names the (org, requestId, event) so that a subscriber can tell a copy from another event.

The event travels with its outcome under EVENT_KEY: the worker stores and caches the outcome
dict as it is, so a replayed outcome brings its event back; `split` takes it out before the
outcome is published.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from badge_worker.domain.timeutil import iso
from badge_worker.domain.windows import LimitCheck, Scope

Doc = dict[str, Any]

# Fixed forever: changing it changes every eventId, and a replayed event would look new.
EVENT_NAMESPACE = uuid.UUID("6f0d7c52-3b8e-5a41-9c2e-b1d4a7e90f13")
EVENT_KEY = "_event"  # the outcome dict's private key carrying its event; never published


class EventName(StrEnum):
    EARNED = "badgeEarned"
    ISSUED = "badgeIssued"
    EARN_REVOKED = "badgeEarnRevoked"
    ISSUE_REVOKED = "badgeIssueRevoked"


def event_id(org_id: int, request_id: str, name: EventName) -> str:
    """Deterministic: the same (org, requestId, event name) always gives the same id. The
    orgId has no ':' and the name ends the text, so distinct triples never share a text."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{org_id}:{request_id}:{name.value}"))


def _event(name: EventName, org_id: int, request_id: str, created_at: float, data: Doc) -> Doc:
    return {"eventName": name.value, "eventId": event_id(org_id, request_id, name), "orgId": org_id,
            "createdAt": iso(created_at), "requestId": request_id, "data": data}


def earn_constraints(checks: Sequence[LimitCheck], counts: Sequence[int]) -> list[Doc]:
    """One entry per limit check of an earn, with its count right after the earn (this earn
    included). Lifetime caps have no window (null start and end); a rolling window is
    (event date - roll, event date]."""
    if len(checks) != len(counts):
        raise ValueError(f"{len(checks)} checks but {len(counts)} counts")
    return [{"constraintLevel": "CUSTOMER" if check.scope is Scope.CUSTOMER else "BADGE",
             "constraintType": check.constraint_type.value,
             "maxEarnLimit": check.limit,
             "currentEarnCount": count,
             "windowStart": iso(check.window_start),
             "windowEnd": iso(check.window_end)}
            for check, count in zip(checks, counts, strict=True)]


def _activity(triggered_by: Mapping[str, Any] | None) -> Doc | None:
    if triggered_by is None:
        return None
    return {"ownerType": triggered_by.get("ownerType"), "referenceId": triggered_by.get("referenceId")}


def badge_earned(org_id: int, request_id: str, created_at: float, *, customer_id: int, badge_id: str,
                 earn_id: str, earned_on: float, event_date: float, issued_id: str | None,
                 expires_on: float | None, triggered_by: Mapping[str, Any] | None,
                 constraints: Sequence[Mapping[str, Any]]) -> Doc:
    """`earned_on`: when the worker awarded it (the read API's lastEarnedOnDate); `event_date`:
    the earn's event date (lastEarnEventDate); `constraints`: earn_constraints() of the earn."""
    return _event(EventName.EARNED, org_id, request_id, created_at, {
        "customerId": customer_id, "badgeId": badge_id, "earnId": earn_id,
        "earnedOn": iso(earned_on), "earnedOnEpochMs": round(earned_on * 1000),
        "earnEventDate": iso(event_date), "earnEventDateEpochMs": round(event_date * 1000),
        "issuedId": issued_id, "expiresOn": expires_on, "expiresOnISO": iso(expires_on),
        "triggeringActivity": _activity(triggered_by),
        "earnConstraints": [dict(c) for c in constraints],
    })


def badge_issued(org_id: int, request_id: str, created_at: float, *, customer_id: int, badge_id: str,
                 issual_id: str, issued_on: float, expires_on: float | None,
                 triggered_by: Mapping[str, Any] | None) -> Doc:
    return _event(EventName.ISSUED, org_id, request_id, created_at, {
        "customerId": customer_id, "badgeId": badge_id, "issualId": issual_id,
        "issuedOn": iso(issued_on), "expiresOn": expires_on, "expiresOnISO": iso(expires_on),
        "triggeringActivity": _activity(triggered_by),
    })


def badge_earn_revoked(org_id: int, request_id: str, created_at: float, *, customer_id: int, badge_id: str,
                       earn_id: str) -> Doc:
    """Revoked on the message time of the revokeEarn (the same on every rerun)."""
    return _event(EventName.EARN_REVOKED, org_id, request_id, created_at, {
        "customerId": customer_id, "badgeId": badge_id, "earnId": earn_id, "revokedOn": iso(created_at),
    })


def badge_issue_revoked(org_id: int, request_id: str, created_at: float, *, customer_id: int, badge_id: str,
                        issual_ids: Sequence[str]) -> Doc:
    """Every issue the command revoked; `issualId` is the first of them."""
    if not issual_ids:
        raise ValueError("a revokeIssue that revoked nothing has no event")
    return _event(EventName.ISSUE_REVOKED, org_id, request_id, created_at, {
        "customerId": customer_id, "badgeId": badge_id, "issualId": issual_ids[0],
        "issualIds": list(issual_ids), "revokedOn": iso(created_at),
    })


def attach(outcome: Doc, event: Doc | None) -> Doc:
    """The outcome carrying its event (for storage and the cache), or the outcome alone."""
    return outcome if event is None else {**outcome, EVENT_KEY: event}


def split(outcome: Doc) -> tuple[Doc, Doc | None]:
    """(the outcome as published, its event or None). The published outcome keeps the key
    order of the original, so it encodes to the same bytes as before events existed."""
    if EVENT_KEY not in outcome:  # rejections and claims: no copy per record
        return outcome, None
    event = outcome.get(EVENT_KEY)
    public = {k: v for k, v in outcome.items() if k != EVENT_KEY}
    return public, event if isinstance(event, dict) else None
