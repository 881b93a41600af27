"""JSON bodies of the read API in the seeds' shapes ("Get badge by ID", "Get badges for
customer") and the fixed-window details. No I/O: the routes pass what they read."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from badge_worker.domain.models import BadgeDefinition
from badge_worker.domain.readmodel import Cycle, Listed, badge_status, current_cycle, cycle_status

Doc = dict[str, Any]

# Fields of the seed's "Get badge by ID" data that a definition may not carry: present anyway.
BADGE_DEFAULTS: Doc = {"badgeNumericId": None, "images": [], "tags": [], "customFields": {}, "createdOn": None,
                       "createdBy": None, "lastUpdatedOn": None, "lastUpdatedBy": None, "badgeGroupId": None,
                       "badgeRank": None, "earnedBadgeExpiry": None, "issuedBadgeExpiry": None}
# and of one badge of "Get badges for customer"
CUSTOMER_BADGE_FIELDS = ("badgeMetaId", "orgId", "name", "description", "startOn", "expiresOn", "images", "tags",
                         "badgeGroupId", "badgeGroupName", "badgeRank", "ownership", "earnType", "benefits",
                         "customerConstraints", "badgeConstraints", "earnedCount", "lastEarnedOnDate",
                         "lastEarnEventDate", "customFields", "active")
_LIST_DEFAULTS: Doc = {"images": [], "tags": [], "benefits": [], "customFields": {}, "badgeGroupName": None}


@dataclass(frozen=True)
class Statistics:
    issued: int
    earned: int


def _constraints(badge: BadgeDefinition, doc: Doc, now: float, cycles: bool) -> None:
    """Each constraint as defined (absent fields left out); with `cycles`, fixed windows carry
    the cycle holding now and its status: computed, never the values a loaded file carried."""
    for key, constraints in (("customerConstraints", badge.customerConstraints),
                             ("badgeConstraints", badge.badgeConstraints)):
        out = []
        for constraint in constraints:
            body = {k: v for k, v in constraint.model_dump(mode="json", by_alias=True).items()
                    if v is not None and k not in ("cycleStatus", "currentCycle")}
            cycle = current_cycle(badge, constraint, now) if cycles else None
            if cycle is not None:
                body["cycleStatus"] = cycle_status(constraint, now)
                body["currentCycle"] = {"startDate": cycle[0], "endDate": cycle[1]}
            out.append(body)
        doc[key] = out


def badge_body(badge: BadgeDefinition, now: float, statistics: Statistics | None = None, *,
               cycles: bool | None = None) -> Doc:
    """"Get badge by ID" data; with statistics (CONTRACT.md section 6: includeStatistics),
    issuedCount, earnedCount, and each fixed window's cycleStatus and currentCycle. `cycles`
    overrides the latter (the customer view shows them, as the seed's example does)."""
    doc = {**BADGE_DEFAULTS, **badge.to_document()}
    doc.pop("issuedCount", None)
    doc.pop("earnedCount", None)
    doc["status"] = badge_status(badge, now)
    _constraints(badge, doc, now, statistics is not None if cycles is None else cycles)
    if statistics is not None:
        doc["issuedCount"] = statistics.issued
        doc["earnedCount"] = statistics.earned
    return doc


def _millis(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000)


def customer_badge(item: Listed, now: float) -> Doc:
    """One badge of "Get badges for customer": the definition, and for an earned one the
    count, the newest earn's dates (epoch milliseconds) and its expiry."""
    definition = badge_body(item.badge, now, cycles=True)
    definition["badgeMetaId"] = item.badge.id
    doc = {k: definition.get(k, _LIST_DEFAULTS.get(k)) for k in CUSTOMER_BADGE_FIELDS}
    summary = item.summary
    doc["earnedCount"] = summary.count if summary else None
    doc["lastEarnedOnDate"] = _millis(summary.last_earned_on) if summary else None
    doc["lastEarnEventDate"] = _millis(summary.last_event_date) if summary else None
    if summary is not None:
        doc["expiresOn"] = summary.expires_on
    return doc


def pagination(page: int, size: int, returned: int, total: int) -> Doc:
    return {"page": page, "size": returned, "total": total, "totalPages": math.ceil(total / size) if size else 0}


def cycle_body(cycle: Cycle, earn_count: int) -> Doc:
    c = cycle.constraint
    return {"startDate": cycle.start, "endDate": cycle.end, "referenceId": c.identity(),
            "constraintType": c.constraintType.value, "constraintLevel": cycle.level.value,
            "durationType": c.durationType.value if c.durationType else None, "refreshRate": c.refreshRate or 1,
            "maxEarnLimit": c.maxEarnLimit, "earnCount": earn_count}
