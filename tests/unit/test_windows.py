from datetime import UTC, datetime

import pytest

from badge_worker.domain.models import BadgeDefinition, ConstraintType
from badge_worker.domain.timeutil import DAY, TimeUnit
from badge_worker.domain.windows import (
    CheckKind,
    Scope,
    fixed_cycle,
    limit_checks,
    next_room,
    rolling_window,
    week_anchor,
)


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


ANCHOR = ts(2024, 1, 31, 12)


def test_day_cycles_anchor_and_edges() -> None:
    assert fixed_cycle(ANCHOR, 3, TimeUnit.DAYS, ANCHOR) == (ANCHOR, ANCHOR + 3 * DAY)
    assert fixed_cycle(ANCHOR, 3, TimeUnit.DAYS, ANCHOR + 3 * DAY - 0.001) == (ANCHOR, ANCHOR + 3 * DAY)
    assert fixed_cycle(ANCHOR, 3, TimeUnit.DAYS, ANCHOR + 3 * DAY) == (ANCHOR + 3 * DAY, ANCHOR + 6 * DAY)
    assert fixed_cycle(ANCHOR, 3, TimeUnit.DAYS, ANCHOR - 1) == (ANCHOR - 3 * DAY, ANCHOR)  # before the anchor
    assert fixed_cycle(ANCHOR, 2, TimeUnit.WEEKS, ANCHOR + 15 * DAY) == (ANCHOR + 14 * DAY, ANCHOR + 28 * DAY)


def test_month_cycles_are_calendar_months_from_the_anchor() -> None:
    # Jan 31 anchor: Feb 29 (leap), Mar 31, Apr 30 ... each computed from the anchor, never chained
    assert fixed_cycle(ANCHOR, 1, TimeUnit.MONTHS, ts(2024, 2, 15)) == (ANCHOR, ts(2024, 2, 29, 12))
    assert fixed_cycle(ANCHOR, 1, TimeUnit.MONTHS, ts(2024, 2, 29, 12)) == (ts(2024, 2, 29, 12), ts(2024, 3, 31, 12))
    assert fixed_cycle(ANCHOR, 1, TimeUnit.MONTHS, ts(2024, 4, 30, 11)) == (ts(2024, 3, 31, 12), ts(2024, 4, 30, 12))
    assert fixed_cycle(ANCHOR, 3, TimeUnit.MONTHS, ts(2024, 5, 1)) == (ts(2024, 4, 30, 12), ts(2024, 7, 31, 12))
    assert fixed_cycle(ANCHOR, 1, TimeUnit.MONTHS, ts(2023, 12, 31, 13)) == (ts(2023, 12, 31, 12), ANCHOR)


def test_cycle_needs_a_positive_rate() -> None:
    with pytest.raises(ValueError):
        fixed_cycle(ANCHOR, 0, TimeUnit.DAYS, ANCHOR)


def test_week_anchor_moves_back_to_the_named_day() -> None:
    wednesday = ts(2024, 1, 31, 12)
    assert week_anchor(wednesday, "MONDAY") == ts(2024, 1, 29)
    assert week_anchor(wednesday, "wednesday") == ts(2024, 1, 31)
    assert week_anchor(wednesday, "THURSDAY") == ts(2024, 1, 25)
    assert week_anchor(wednesday, None) == wednesday
    assert week_anchor(wednesday, "FUNDAY") == wednesday


def test_rolling_window_is_half_open_on_the_left() -> None:
    t = ts(2024, 3, 31)
    assert rolling_window(t, TimeUnit.DAYS, 1) == (t - DAY, t)
    assert rolling_window(t, TimeUnit.MONTHS, 1) == (ts(2024, 2, 29), t)


BADGE = BadgeDefinition.model_validate({
    "id": "b", "orgId": 1, "startOn": ANCHOR,
    "customerConstraints": [
        {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 2, "referenceId": "life"},
        {"constraintType": "CUSTOMER_BADGE_ROLLING_WINDOW", "maxEarnForDays": 1, "rollForDays": 2,
         "maxEarnForWeeks": None, "rollForWeeks": None, "maxEarnForMonths": 3, "rollForMonths": 1},
        {"constraintType": "CUSTOMER_BADGE_NO_LIMIT"},
    ],
    "badgeConstraints": [
        {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "WEEKLY", "maxEarnLimit": 10,
         "startDayOfTheWeek": "MONDAY"},
        {"constraintType": "BADGE_ROLLING_WINDOW", "rollType": "WEEKS", "rollValue": 1, "maxEarnLimit": 5},
        {"constraintType": "BADGE_NO_LIMIT"},
    ],
})


def test_limit_checks_cover_every_constraint_kind() -> None:
    t = ts(2024, 2, 7, 10)  # a Wednesday
    checks = limit_checks(BADGE, 42, t)
    assert [(c.scope, c.constraint_type, c.kind, c.limit) for c in checks] == [
        (Scope.CUSTOMER, ConstraintType.CUSTOMER_BADGE_FIXED_VALUE, CheckKind.COUNTER, 2),
        (Scope.CUSTOMER, ConstraintType.CUSTOMER_BADGE_ROLLING_WINDOW, CheckKind.ROLLING, 1),
        (Scope.CUSTOMER, ConstraintType.CUSTOMER_BADGE_ROLLING_WINDOW, CheckKind.ROLLING, 3),
        (Scope.BADGE, ConstraintType.BADGE_FIXED_WINDOW, CheckKind.COUNTER, 10),
        (Scope.BADGE, ConstraintType.BADGE_ROLLING_WINDOW, CheckKind.ROLLING, 5),
    ]
    life, days, months, week, roll = checks
    assert life.counter == "c:42:life:life" and life.window_start is None
    assert days.window_start == t - 2 * DAY and days.window_end == t
    assert months.window_start == ts(2024, 1, 7, 10)
    assert (week.window_start, week.window_end) == (ts(2024, 2, 5), ts(2024, 2, 12))  # Monday to Monday
    assert week.counter.startswith("b:") and ":w:" in week.counter
    assert roll.counter.endswith(":r:1WEEKS")
    # customer counters are per customer, badge counters are shared
    other = limit_checks(BADGE, 43, t)
    assert other[0].counter != life.counter and other[3].counter == week.counter


def test_constraint_identity_is_stable_without_reference_id() -> None:
    a = limit_checks(BADGE, 1, ANCHOR)[3].constraint_id
    assert a == limit_checks(BADGE, 2, ANCHOR + 99)[3].constraint_id
    assert len(a) == 12


def test_fixed_window_anchors_on_the_badge_start_or_zero() -> None:
    no_start = BadgeDefinition.model_validate({"id": "b", "orgId": 1, "badgeConstraints": [
        {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "maxEarnLimit": 1}]})
    check = limit_checks(no_start, 1, 1.5 * DAY)[0]
    assert (check.window_start, check.window_end) == (DAY, 2 * DAY)


def test_next_room() -> None:
    t = ts(2024, 2, 7, 10)
    life, days, _, week, roll = limit_checks(BADGE, 42, t)
    assert next_room(life, None) is None
    assert next_room(week, None) == week.window_end
    assert next_room(roll, t - DAY) == t + 6 * DAY
    assert next_room(days, None) is None


def _with_badge_constraints(*constraints: dict[str, object]) -> BadgeDefinition:
    return BadgeDefinition.model_validate({"id": "b", "orgId": 1, "startOn": ANCHOR,
                                           "badgeConstraints": list(constraints)})


WEEKLY = {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "WEEKLY", "maxEarnLimit": 10,
          "startDayOfTheWeek": "MONDAY", "endDate": ANCHOR + 400 * DAY}
ROLLING = {"constraintType": "BADGE_ROLLING_WINDOW", "rollType": "WEEKS", "rollValue": 1, "maxEarnLimit": 5}


def test_editing_a_limit_or_end_date_keeps_the_counter_names() -> None:
    t = ts(2024, 2, 7, 10)
    before = [c.counter for c in limit_checks(_with_badge_constraints(WEEKLY, ROLLING), 1, t)]
    edited = _with_badge_constraints({**WEEKLY, "maxEarnLimit": 20, "endDate": None, "cycleStatus": "ACTIVE"},
                                     {**ROLLING, "maxEarnLimit": 1})
    after = limit_checks(edited, 1, t)
    assert [c.counter for c in after] == before
    assert [c.limit for c in after] == [20, 1]  # the new limits apply to the same counts


def test_changing_the_window_shape_starts_new_counters() -> None:
    t = ts(2024, 2, 7, 10)
    before = {c.counter for c in limit_checks(_with_badge_constraints(WEEKLY, ROLLING), 1, t)}
    for edit in ({**WEEKLY, "refreshRate": 2}, {**WEEKLY, "startDayOfTheWeek": "WEDNESDAY"},
                 {**ROLLING, "rollValue": 2}):
        after = {c.counter for c in limit_checks(_with_badge_constraints(edit), 1, t)}
        assert not after & before


def test_constraints_of_one_shape_share_their_counter() -> None:
    # Two lifetime caps with no referenceId count the same earns: one counter, two checks,
    # each with its own limit (the counter must be taken once per earn; see docs/counters.md).
    badge = _with_badge_constraints({"constraintType": "BADGE_FIXED_VALUE", "maxEarnLimit": 3},
                                    {"constraintType": "BADGE_FIXED_VALUE", "maxEarnLimit": 5})
    first, second = limit_checks(badge, 1, ANCHOR)
    assert first.counter == second.counter and (first.limit, second.limit) == (3, 5)
    # a referenceId keeps them apart
    named = _with_badge_constraints({"constraintType": "BADGE_FIXED_VALUE", "maxEarnLimit": 3},
                                    {"constraintType": "BADGE_FIXED_VALUE", "maxEarnLimit": 5, "referenceId": "r"})
    a, b = limit_checks(named, 1, ANCHOR)
    assert a.counter != b.counter and b.counter == "b:r:life"
