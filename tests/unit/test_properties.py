"""Property tests of the domain core (hypothesis)."""

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from badge_worker.domain import rules
from badge_worker.domain.models import BadgeDefinition
from badge_worker.domain.rules import LimitUsage
from badge_worker.domain.timeutil import TimeUnit, add_months, iso, parse_instant
from badge_worker.domain.windows import CheckKind, fixed_cycle, limit_checks

instants = st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False, allow_infinity=False)
units = st.sampled_from(list(TimeUnit))
rates = st.integers(min_value=1, max_value=12)


@given(anchor=instants, rate=rates, unit=units, t=instants)
def test_every_instant_is_in_exactly_one_cycle(anchor: float, rate: int, unit: TimeUnit, t: float) -> None:
    start, end = fixed_cycle(anchor, rate, unit, t)
    assert start <= t < end
    # the neighbours tile time with no gap and no overlap
    assert fixed_cycle(anchor, rate, unit, end) [0] == end
    before = fixed_cycle(anchor, rate, unit, start - 0.001)
    assert before[1] == start


@given(anchor=instants, rate=rates, unit=units, t=instants, dt=st.floats(min_value=0, max_value=1e7))
def test_cycles_are_monotonic(anchor: float, rate: int, unit: TimeUnit, t: float, dt: float) -> None:
    assert fixed_cycle(anchor, rate, unit, t)[0] <= fixed_cycle(anchor, rate, unit, t + dt)[0]


@given(t=instants, months=st.integers(min_value=-48, max_value=48))
def test_add_months_moves_by_calendar_months(t: float, months: int) -> None:
    moved = add_months(t, months)
    a, b = datetime.fromtimestamp(t, UTC), datetime.fromtimestamp(moved, UTC)
    assert (b.year * 12 + b.month) - (a.year * 12 + a.month) == months
    assert b.day <= a.day and (b.hour, b.minute, b.second) == (a.hour, a.minute, a.second)


@given(t=instants)
def test_iso_round_trips_to_the_millisecond(t: float) -> None:
    text = iso(t)
    assert text is not None
    assert abs(parse_instant(text) - t) <= 0.0005 + 1e-6


ROLLING = st.fixed_dictionaries({
    "unit": units, "value": st.integers(min_value=1, max_value=3), "limit": st.integers(min_value=0, max_value=4),
    "gaps": st.lists(st.floats(min_value=0, max_value=20 * 86400), min_size=1, max_size=40),
    "scope": st.sampled_from(["badge", "customer"]),
})


@settings(max_examples=200)
@given(case=ROLLING)
def test_rolling_count_never_exceeds_its_limit(case: dict) -> None:  # type: ignore[type-arg]
    """Apply earns in sequence, taking a slot only when check_limits allows: no window of the
    rolling length ever holds more accepted earns than the limit."""
    if case["scope"] == "badge":
        constraint = {"constraintType": "BADGE_ROLLING_WINDOW", "rollType": case["unit"].value,
                      "rollValue": case["value"], "maxEarnLimit": case["limit"]}
    else:
        suffix = case["unit"].value.capitalize()
        constraint = {"constraintType": "CUSTOMER_BADGE_ROLLING_WINDOW", f"maxEarnFor{suffix}": case["limit"],
                      f"rollFor{suffix}": case["value"]}
    key = "badgeConstraints" if case["scope"] == "badge" else "customerConstraints"
    badge = BadgeDefinition.model_validate({"id": "b", "orgId": 1, key: [constraint]})
    t = 1_700_000_000.0
    accepted: list[float] = []
    for gap in case["gaps"]:
        t += gap
        checks = limit_checks(badge, 5, t)
        (check,) = checks
        assert check.kind is CheckKind.ROLLING
        inside = [e for e in accepted if check.window_start is not None and check.window_start < e <= t]
        if rules.check_limits(checks, {check.counter: LimitUsage(len(inside))}) is None:
            accepted.append(t)
    for e in accepted:  # every window ending at an accepted earn
        lo = limit_checks(badge, 5, e)[0].window_start
        assert lo is not None
        assert len([x for x in accepted if lo < x <= e]) <= case["limit"]


scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=8))
extras = st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k not in BadgeDefinition.model_fields),
                         st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(
                             st.text(max_size=5), c, max_size=3), max_leaves=6), max_size=4)
constraints = st.sampled_from([
    {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 3},
    {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "MONTHLY", "refreshRate": 2, "maxEarnLimit": 1,
     "startDate": "2024-01-31T00:00:00Z", "currentCycle": {"startDate": 1.5}},
    {"constraintType": "BADGE_ROLLING_WINDOW", "rollType": "DAYS", "rollValue": 1, "maxEarnLimit": 300},
    {"constraintType": "CUSTOMER_BADGE_ROLLING_WINDOW", "maxEarnForDays": 10, "rollForDays": 2,
     "maxEarnForWeeks": None, "rollForWeeks": None},
    {"constraintType": "BADGE_NO_LIMIT", "note": "x"},
])


@given(extra=extras, customer=st.lists(constraints, max_size=3), badge_level=st.lists(constraints, max_size=3),
       start=st.one_of(instants, st.just("2024-05-27T09:51:27.5Z")), active=st.booleans())
def test_parse_then_serialise_keeps_every_field(extra: dict, customer: list, badge_level: list,  # type: ignore[type-arg]
                                                start: object, active: bool) -> None:
    raw = {"id": "662724bb8fe258516a88fde2", "orgId": 100458, "startOn": start, "active": active,
           "earnedBadgeExpiry": {"expiryType": "NEVER"}, "customerConstraints": customer,
           "badgeConstraints": badge_level, **extra}
    doc = BadgeDefinition.model_validate(raw).to_document()
    assert set(raw) <= set(doc)
    for key, value in extra.items():
        assert doc[key] == value
    for kept, given_c in zip(doc["badgeConstraints"], badge_level, strict=True):
        assert set(given_c) <= set(kept)
    assert BadgeDefinition.model_validate(doc).to_document() == doc
