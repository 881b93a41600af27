"""Window arithmetic for earn limits, and the limit checks an earn must pass.

Fixed windows are cycles [start, end) of refreshRate x unit, anchored at the constraint's
startDate (else the badge's startOn) and tiling all of time. Rolling windows are
(event - N units, event]. Lifetime caps have no window. All in UTC epoch seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from badge_worker.domain.models import BadgeDefinition, Constraint, ConstraintType
from badge_worker.domain.timeutil import DAY, TimeUnit, add_months, add_units, to_datetime

WEEKDAYS = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")


class Scope(StrEnum):
    CUSTOMER = "customer"
    BADGE = "badge"


class CheckKind(StrEnum):
    COUNTER = "counter"  # lifetime or one fixed-window cycle: a plain count
    ROLLING = "rolling"  # a set of event dates, counted over (lo, hi]


@dataclass(frozen=True)
class LimitCheck:
    """One limit an earn must pass, and the counter that records it."""

    scope: Scope
    constraint_type: ConstraintType
    constraint_id: str
    limit: int
    kind: CheckKind
    counter: str  # counter name, unique within (org, badge)
    window_start: float | None = None
    window_end: float | None = None
    roll_unit: TimeUnit | None = None
    roll_value: int | None = None


def _months_between(anchor: float, t: float) -> int:
    a, b = to_datetime(anchor), to_datetime(t)
    return (b.year - a.year) * 12 + (b.month - a.month)


def cycle_index(anchor: float, rate: int, unit: TimeUnit, t: float) -> int:
    """Which cycle of `rate` x `unit` anchored at `anchor` holds instant t (0: the one that
    starts at the anchor; negative before it)."""
    if rate < 1:
        raise ValueError("refreshRate must be >= 1")
    if unit is not TimeUnit.MONTHS:
        period = rate * (DAY if unit is TimeUnit.DAYS else 7 * DAY)
        k = math.floor((t - anchor) / period)
        # Float rounding can put t a hair outside [start, start + period).
        if t < anchor + k * period:
            k -= 1
        elif t >= anchor + (k + 1) * period:
            k += 1
        return k
    k = _months_between(anchor, t) // rate
    while add_months(anchor, k * rate) > t:
        k -= 1
    while add_months(anchor, (k + 1) * rate) <= t:
        k += 1
    return k


def cycle_bounds(anchor: float, rate: int, unit: TimeUnit, k: int) -> tuple[float, float]:
    """Cycle number k [start, end) (see cycle_index)."""
    if unit is not TimeUnit.MONTHS:
        period = rate * (DAY if unit is TimeUnit.DAYS else 7 * DAY)
        return anchor + k * period, anchor + (k + 1) * period
    return add_months(anchor, k * rate), add_months(anchor, (k + 1) * rate)


def fixed_cycle(anchor: float, rate: int, unit: TimeUnit, t: float) -> tuple[float, float]:
    """The cycle [start, end) of `rate` x `unit` anchored at `anchor` that holds instant t."""
    return cycle_bounds(anchor, rate, unit, cycle_index(anchor, rate, unit, t))


def week_anchor(anchor: float, start_day: str | None) -> float:
    """Move a weekly anchor back to 00:00 UTC of the named weekday, if one is named."""
    if not start_day or start_day.strip().upper() not in WEEKDAYS:
        return anchor
    wanted = WEEKDAYS.index(start_day.strip().upper())
    dt = to_datetime(anchor)
    midnight = dt.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    return midnight - ((dt.weekday() - wanted) % 7) * DAY


def cycle_anchor(badge: BadgeDefinition, constraint: Constraint) -> float:
    """Where a fixed-window constraint's cycles are anchored: its startDate, else the badge's
    startOn (else the epoch); weekly cycles move back to their named weekday."""
    anchor = constraint.startDate if constraint.startDate is not None else badge.startOn
    anchor = 0.0 if anchor is None else anchor
    if constraint.durationType is TimeUnit.WEEKS:
        anchor = week_anchor(anchor, constraint.startDayOfTheWeek)
    return anchor


def constraint_cycle(badge: BadgeDefinition, constraint: Constraint, t: float) -> tuple[float, float]:
    """The cycle [start, end) of a fixed-window constraint that holds instant t."""
    assert constraint.durationType is not None
    return fixed_cycle(cycle_anchor(badge, constraint), constraint.refreshRate or 1, constraint.durationType, t)


def rolling_window(t: float, unit: TimeUnit, value: int) -> tuple[float, float]:
    """The rolling window (lo, hi] = (t - value units, t]."""
    return add_units(t, unit, -value), t


def _rolling_entries(c: Constraint) -> list[tuple[TimeUnit, int, int]]:
    if c.constraintType is ConstraintType.BADGE_ROLLING_WINDOW:
        assert c.rollType is not None and c.rollValue is not None and c.maxEarnLimit is not None
        return [(c.rollType, c.rollValue, c.maxEarnLimit)]
    entries = []
    for unit in TimeUnit:
        suffix = unit.value.capitalize()  # Days / Weeks / Months
        limit, roll = getattr(c, f"maxEarnFor{suffix}"), getattr(c, f"rollFor{suffix}")
        if limit is not None and roll is not None:
            entries.append((unit, int(roll), int(limit)))
    return entries


def limit_checks(badge: BadgeDefinition, customer_id: int, t: float) -> list[LimitCheck]:
    """Every limit an earn at instant t must pass, customer limits first.

    Counter names are `<owner>:<constraint identity>:<window>` (owner `c:<customerId>` or
    `b`; window `life`, `w:<cycle start ms>` or `r:<value><unit>`). The identity
    (`Constraint.identity`) is the referenceId, else a digest of the constraint's window
    shape only, so editing a limit or endDate keeps the counts (docs/counters.md).

    Two constraints with the same shape and no referenceId (e.g. two BADGE_FIXED_VALUE caps)
    therefore yield checks on the SAME counter, each with its own limit. Every check is
    returned and each must pass (the smaller limit decides), but the counter counts the same
    earns once: whoever takes or rebuilds counts must take a counter once per earn, however
    many checks name it.
    """
    checks: list[LimitCheck] = []
    for constraint in [*badge.customerConstraints, *badge.badgeConstraints]:
        ctype = constraint.constraintType
        if ctype.value.endswith("_NO_LIMIT"):
            continue
        scope = Scope.CUSTOMER if ctype.is_customer else Scope.BADGE
        owner = f"c:{customer_id}" if scope is Scope.CUSTOMER else "b"
        cid = constraint.identity()
        base = f"{owner}:{cid}"
        if ctype.value.endswith("_FIXED_VALUE"):
            assert constraint.maxEarnLimit is not None
            checks.append(LimitCheck(scope, ctype, cid, constraint.maxEarnLimit,
                                     CheckKind.COUNTER, f"{base}:life"))
        elif ctype.value.endswith("_FIXED_WINDOW"):
            assert constraint.maxEarnLimit is not None
            start, end = constraint_cycle(badge, constraint, t)
            checks.append(LimitCheck(scope, ctype, cid, constraint.maxEarnLimit, CheckKind.COUNTER,
                                     f"{base}:w:{round(start * 1000)}", start, end))
        else:
            for unit, value, limit in _rolling_entries(constraint):
                lo, hi = rolling_window(t, unit, value)
                checks.append(LimitCheck(scope, ctype, cid, limit, CheckKind.ROLLING,
                                         f"{base}:r:{value}{unit.value}", lo, hi, unit, value))
    return checks


def next_room(check: LimitCheck, blocking_event: float | None) -> float | None:
    """When the window of a full check next has room.

    Fixed cycle: the start of the next cycle. Rolling: when the event that must leave the
    window (`blocking_event`) drops out of it. Lifetime: never (None).
    """
    if check.kind is CheckKind.ROLLING:
        if blocking_event is None or check.roll_unit is None or check.roll_value is None:
            return None
        return add_units(blocking_event, check.roll_unit, check.roll_value)
    return check.window_end
