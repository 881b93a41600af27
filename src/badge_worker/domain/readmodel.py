"""What the read API (CONTRACT.md section 6) derives from definitions and stored earns.

Pure: the HTTP layer reads a customer's earned badges and issues, and the org's badge
definitions, and asks this module which badges each view lists and with which counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from badge_worker.domain.models import BadgeDefinition, Constraint, EarnType
from badge_worker.domain.rules import IssueRecord
from badge_worker.domain.windows import (
    CheckKind,
    LimitCheck,
    Scope,
    constraint_cycle,
    cycle_anchor,
    cycle_bounds,
    cycle_index,
    limit_checks,
)


class BadgeType(StrEnum):
    AVAILABLE = "AVAILABLE"
    EARNED = "EARNED"
    AVAILABLE_TO_ISSUE = "AVAILABLE_TO_ISSUE"
    EXPIRED = "EXPIRED"


class SortOn(StrEnum):
    RANK = "RANK"
    LAST_EARNED_ON_DATE = "LAST_EARNED_ON_DATE"
    LAST_EARNED_EVENT_DATE = "LAST_EARNED_EVENT_DATE"


class ConstraintLevel(StrEnum):
    BADGE = "BADGE"
    CUSTOMER = "CUSTOMER"
    ALL = "ALL"


@dataclass(frozen=True)
class Earn:
    """One earned badge that still counts (not revoked), as the read side needs it."""

    badge_id: str
    event_date: float
    earned_on: float
    expires_on: float | None

    def expired(self, now: float) -> bool:
        return self.expires_on is not None and self.expires_on <= now


@dataclass(frozen=True)
class EarnSummary:
    """A customer's earns of one badge: how many, the newest, and when the newest expires."""

    count: int
    last_earned_on: float
    last_event_date: float
    expires_on: float | None


@dataclass(frozen=True)
class Listed:
    """One badge of a customer view, with the customer's earns of it (None: never earned)."""

    badge: BadgeDefinition
    summary: EarnSummary | None


def badge_status(badge: BadgeDefinition, now: float) -> str:
    """UPCOMING before startOn, EXPIRED after expiresOn, else LIVE (`active` is its own field)."""
    if badge.startOn is not None and now < badge.startOn:
        return "UPCOMING"
    if badge.expiresOn is not None and now > badge.expiresOn:
        return "EXPIRED"
    return "LIVE"


def is_live(badge: BadgeDefinition, now: float) -> bool:
    """Can be earned now: active and within [startOn, expiresOn] (the worker's 815 rule)."""
    return badge.active and badge_status(badge, now) == "LIVE"


def cycle_status(constraint: Constraint, now: float) -> str:
    """ACTIVE while now is within the constraint's [startDate, endDate] (open where absent)."""
    if constraint.startDate is not None and now < constraint.startDate:
        return "INACTIVE"
    if constraint.endDate is not None and now > constraint.endDate:
        return "INACTIVE"
    return "ACTIVE"


def current_cycle(badge: BadgeDefinition, constraint: Constraint, now: float) -> tuple[float, float] | None:
    """The cycle holding now of a fixed-window constraint; None for any other type."""
    if not constraint.constraintType.value.endswith("_FIXED_WINDOW"):
        return None
    return constraint_cycle(badge, constraint, now)


def summarize(earns: Iterable[Earn]) -> dict[str, EarnSummary]:
    """Per badge: the count, the newest earn (by earnedOn) and its expiry, the newest event date."""
    found: dict[str, EarnSummary] = {}
    for earn in earns:
        seen = found.get(earn.badge_id)
        if seen is None:
            found[earn.badge_id] = EarnSummary(1, earn.earned_on, earn.event_date, earn.expires_on)
            continue
        # the newest by earnedOn; earns of one batch share it: then the later event, then the
        # later expiry, so the answer does not depend on the order MongoDB returns them in
        newer = (earn.earned_on, earn.event_date, earn.expires_on or math.inf) > \
            (seen.last_earned_on, seen.last_event_date, seen.expires_on or math.inf)
        found[earn.badge_id] = EarnSummary(
            seen.count + 1,
            earn.earned_on if newer else seen.last_earned_on,
            max(seen.last_event_date, earn.event_date),
            earn.expires_on if newer else seen.expires_on)
    return found


def window_count(check: LimitCheck, event_dates: Iterable[float]) -> int:
    """How many of these earns (their event dates) the check's window counts."""
    if check.window_start is None or check.window_end is None:  # a lifetime cap
        return sum(1 for _ in event_dates)
    lo, hi = check.window_start, check.window_end
    if check.kind is CheckKind.ROLLING:
        return sum(1 for t in event_dates if lo < t <= hi)
    return sum(1 for t in event_dates if lo <= t < hi)


def customer_capped(badge: BadgeDefinition, customer_id: int, event_dates: Sequence[float], now: float) -> bool:
    """True when one of the badge's customer limits would refuse an earn dated now (830)."""
    checks = [c for c in limit_checks(badge, customer_id, now) if c.scope is Scope.CUSTOMER]
    return any(window_count(c, event_dates) >= c.limit for c in checks)


def open_to_owners(badge: BadgeDefinition) -> bool:
    """Unrestricted, or claimed by at least one owner: some module can award it."""
    return not badge.ownership.restrictedToOwners or any(c.isActive for c in badge.ownership.claims)


def customer_view(badges: Iterable[BadgeDefinition], earns: Sequence[Earn],
                  issues: Mapping[str, Sequence[IssueRecord]],
                  customer_id: int, now: float, badge_type: BadgeType | None = None, *,
                  include_expired: bool = False, group_id: str | None = None) -> list[Listed]:
    """The badges of one customer view (unsorted), each once. `issues`: the customer's
    issues (not revoked) by badge id.

    - EARNED: badges with an earn that has not expired (with `include_expired`, any earn);
    - EXPIRED: badges whose every earn has expired;
    - AVAILABLE: live badges some owner can award, not capped for this customer now, and
      (ISSUE_EARN) issued to the customer with an issue valid now;
    - AVAILABLE_TO_ISSUE: live ISSUE_EARN badges some owner can award, not issued now;
    - None: EARNED and AVAILABLE together.
    """
    current = summarize(e for e in earns if include_expired or not e.expired(now))
    lapsed = summarize(e for e in earns if e.expired(now))
    dates: dict[str, list[float]] = {}
    for earn in earns:
        dates.setdefault(earn.badge_id, []).append(earn.event_date)
    issued = {b for b, records in issues.items() if any(i.active and i.valid_at(now) for i in records)}
    listed: list[Listed] = []
    for badge in badges:
        if group_id is not None and badge.badgeGroupId != group_id:
            continue
        summary = current.get(badge.id)
        if badge_type is BadgeType.EXPIRED:
            if badge.id in lapsed and not any(not e.expired(now) for e in earns if e.badge_id == badge.id):
                listed.append(Listed(badge, lapsed[badge.id]))
            continue
        if badge_type in (BadgeType.EARNED, None) and summary is not None:
            listed.append(Listed(badge, summary))
            continue
        if badge_type is BadgeType.EARNED or not (is_live(badge, now) and open_to_owners(badge)):
            continue
        gated = badge.earnType is EarnType.ISSUE_EARN
        if badge_type is BadgeType.AVAILABLE_TO_ISSUE:
            if gated and badge.id not in issued:
                listed.append(Listed(badge, summary))
            continue
        if gated and badge.id not in issued:
            continue
        if not customer_capped(badge, customer_id, dates.get(badge.id, []), now):
            listed.append(Listed(badge, summary))
    return listed


def sort_view(items: Iterable[Listed], sort_on: SortOn) -> list[Listed]:
    """RANK ascending with unranked last; the LAST_EARNED_* sorts newest first, never-earned
    last. Ties keep a stable order by name and id."""
    ordered = sorted(items, key=lambda x: (x.badge.name or "", x.badge.id))
    if sort_on is SortOn.RANK:
        return sorted(ordered, key=lambda x: (x.badge.badgeRank is None, x.badge.badgeRank or 0))

    def newest(x: Listed) -> tuple[bool, float]:
        if x.summary is None:
            return True, 0.0
        value = x.summary.last_earned_on if sort_on is SortOn.LAST_EARNED_ON_DATE else x.summary.last_event_date
        return False, -value

    return sorted(ordered, key=newest)


@dataclass(frozen=True)
class Cycle:
    """One cycle of a fixed-window constraint."""

    constraint: Constraint
    level: ConstraintLevel
    start: float
    end: float


def fixed_window_constraints(badge: BadgeDefinition, level: ConstraintLevel
                             ) -> list[tuple[ConstraintLevel, Constraint]]:
    """The badge's fixed-window constraints of that level (ALL: customer ones first)."""
    found: list[tuple[ConstraintLevel, Constraint]] = []
    if level in (ConstraintLevel.CUSTOMER, ConstraintLevel.ALL):
        found += [(ConstraintLevel.CUSTOMER, c) for c in badge.customerConstraints
                  if c.constraintType.value.endswith("_FIXED_WINDOW")]
    if level in (ConstraintLevel.BADGE, ConstraintLevel.ALL):
        found += [(ConstraintLevel.BADGE, c) for c in badge.badgeConstraints
                  if c.constraintType.value.endswith("_FIXED_WINDOW")]
    return found


@dataclass(frozen=True)
class CycleRange:
    """The cycles of one fixed-window constraint that a request asks for: numbers first..last
    (see windows.cycle_index), so that a page is computed without walking the others."""

    level: ConstraintLevel
    constraint: Constraint
    anchor: float
    first: int
    last: int

    @property
    def count(self) -> int:
        return max(0, self.last - self.first + 1)

    def cycle(self, k: int) -> Cycle:
        c = self.constraint
        assert c.durationType is not None
        lo, hi = cycle_bounds(self.anchor, c.refreshRate or 1, c.durationType, k)
        return Cycle(c, self.level, lo, hi)


def cycle_ranges(badge: BadgeDefinition, level: ConstraintLevel, start: float | None, end: float
                 ) -> list[CycleRange]:
    """Per fixed-window constraint of `level`, the cycles that overlap [start, end] and the
    constraint's own [startDate, endDate]. `start` None: from the constraint's first cycle."""
    ranges = []
    for lvl, constraint in fixed_window_constraints(badge, level):
        assert constraint.durationType is not None
        anchor = cycle_anchor(badge, constraint)
        rate, unit = constraint.refreshRate or 1, constraint.durationType
        lo = anchor if start is None else start
        if constraint.startDate is not None:
            lo = max(lo, constraint.startDate)
        hi = end if constraint.endDate is None else min(end, constraint.endDate)
        if hi < lo:
            ranges.append(CycleRange(lvl, constraint, anchor, 0, -1))
        else:
            ranges.append(CycleRange(lvl, constraint, anchor, cycle_index(anchor, rate, unit, lo),
                                     cycle_index(anchor, rate, unit, hi)))
    return ranges


def cycles_page(ranges: Sequence[CycleRange], page: int, size: int) -> list[Cycle]:
    """Page `page` (from 0) of `size` cycles: constraint after constraint, newest cycle first
    within each. Costs the page's size, however many cycles the ranges hold."""
    skip = page * size
    found: list[Cycle] = []
    for r in ranges:
        if skip >= r.count:
            skip -= r.count
            continue
        k, skip = r.last - skip, 0
        while k >= r.first and len(found) < size:
            found.append(r.cycle(k))
            k -= 1
        if len(found) == size:
            break
    return found
