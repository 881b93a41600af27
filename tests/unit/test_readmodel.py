"""The read API's pure rules: which badges each customer view lists, sorts, cycles."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from badge_worker.domain.models import BadgeDefinition
from badge_worker.domain.readmodel import (
    BadgeType,
    ConstraintLevel,
    Earn,
    Listed,
    SortOn,
    badge_status,
    current_cycle,
    customer_capped,
    customer_view,
    cycle_ranges,
    cycle_status,
    cycles_page,
    is_live,
    open_to_owners,
    sort_view,
    summarize,
    window_count,
)
from badge_worker.domain.rules import IssueRecord
from badge_worker.domain.windows import limit_checks

DAY = 86_400.0
T0 = 1_750_000_000.0  # "now" of these tests


def badge(badge_id: str, **extra: Any) -> BadgeDefinition:
    body: dict[str, Any] = {"id": badge_id, "orgId": 1, "startOn": T0 - 10 * DAY, "expiresOn": T0 + 10 * DAY}
    body.update(extra)
    return BadgeDefinition.model_validate(body)


def test_status_and_liveness() -> None:
    assert badge_status(badge("a"), T0) == "LIVE"
    assert badge_status(badge("a", startOn=T0 + 1), T0) == "UPCOMING"
    assert badge_status(badge("a", expiresOn=T0 - 1), T0) == "EXPIRED"
    assert badge_status(badge("a", startOn=None, expiresOn=None), T0) == "LIVE"
    assert is_live(badge("a"), T0) and not is_live(badge("a", active=False), T0)


def test_cycle_status_and_current_cycle() -> None:
    b = badge("a", badgeConstraints=[
        {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "refreshRate": 2, "maxEarnLimit": 1,
         "startDate": T0 - 3 * DAY, "endDate": T0 + DAY},
        {"constraintType": "BADGE_FIXED_VALUE", "maxEarnLimit": 3}])
    window, lifetime = b.badgeConstraints
    assert cycle_status(window, T0) == "ACTIVE"
    assert cycle_status(window, T0 - 4 * DAY) == "INACTIVE"
    assert cycle_status(window, T0 + 2 * DAY) == "INACTIVE"
    assert current_cycle(b, window, T0) == (T0 - DAY, T0 + DAY)
    assert current_cycle(b, lifetime, T0) is None


def test_summary_takes_the_newest_earn() -> None:
    earns = [Earn("a", event_date=5, earned_on=10, expires_on=100), Earn("a", event_date=7, earned_on=8,
                                                                        expires_on=50),
             Earn("b", event_date=1, earned_on=2, expires_on=None)]
    found = summarize(earns)
    assert (found["a"].count, found["a"].last_earned_on, found["a"].last_event_date, found["a"].expires_on) == \
        (2, 10, 7, 100)
    assert found["b"].count == 1 and found["b"].expires_on is None
    assert Earn("x", 0, 0, 5).expired(5) and not Earn("x", 0, 0, None).expired(10**12)


@given(st.lists(st.floats(min_value=T0 - 40 * DAY, max_value=T0, allow_nan=False), max_size=30))
def test_window_counts_agree_with_the_windows(dates: list[float]) -> None:
    b = badge("a", customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_WINDOW", "durationType": "WEEKS", "refreshRate": 1,
         "maxEarnLimit": 3},
        {"constraintType": "CUSTOMER_BADGE_ROLLING_WINDOW", "maxEarnForDays": 2, "rollForDays": 5},
        {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 10}])
    fixed, rolling, lifetime = limit_checks(b, 7, T0)
    assert fixed.window_start is not None and fixed.window_end is not None
    assert window_count(fixed, dates) == sum(fixed.window_start <= t < fixed.window_end for t in dates)
    assert window_count(rolling, dates) == sum(T0 - 5 * DAY < t <= T0 for t in dates)
    assert window_count(lifetime, dates) == len(dates)
    capped = (window_count(fixed, dates) >= 3 or window_count(rolling, dates) >= 2 or len(dates) >= 10)
    assert customer_capped(b, 7, dates, T0) is capped


def test_badge_limits_do_not_cap_a_customer() -> None:
    b = badge("a", badgeConstraints=[{"constraintType": "BADGE_FIXED_VALUE", "maxEarnLimit": 0}])
    assert not customer_capped(b, 1, [T0 - 1], T0)


def test_owners() -> None:
    assert open_to_owners(badge("a"))
    assert not open_to_owners(badge("a", ownership={"restrictedToOwners": ["Loyalty"], "claims": []}))
    assert open_to_owners(badge("a", ownership={"restrictedToOwners": ["Loyalty"], "claims": [
        {"ownerType": "Loyalty", "referenceId": "1", "isActive": True}]}))
    assert not open_to_owners(badge("a", ownership={"restrictedToOwners": ["Loyalty"], "claims": [
        {"ownerType": "Loyalty", "referenceId": "1", "isActive": False}]}))


def ids(items: list[Listed]) -> set[str]:
    return {x.badge.id for x in items}


def test_each_view_lists_what_the_contract_says() -> None:
    badges = [
        badge("earned"),
        badge("lapsed", earnedBadgeExpiry={"expiryType": "NEVER"}),
        badge("capped", customerConstraints=[{"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 1}]),
        badge("gated", earnType="ISSUE_EARN"),
        badge("issued", earnType="ISSUE_EARN"),
        badge("closed", ownership={"restrictedToOwners": ["Loyalty"]}),
        badge("later", startOn=T0 + DAY),
        badge("free", badgeGroupId="g"),
    ]
    earns = [Earn("earned", T0 - 5, T0 - 5, None), Earn("lapsed", T0 - DAY, T0 - DAY, T0 - 1),
             Earn("capped", T0 - 9, T0 - 9, None)]
    issues = {"issued": [IssueRecord("i1", T0 - DAY, None)], "gated": [IssueRecord("i0", T0 - 9 * DAY, T0 - DAY)]}

    def view(kind: BadgeType | None, **kw: Any) -> set[str]:
        return ids(customer_view(badges, earns, issues, 5, T0, kind, **kw))

    assert view(BadgeType.EARNED) == {"earned", "capped"}
    assert view(BadgeType.EARNED, include_expired=True) == {"earned", "capped", "lapsed"}
    assert view(BadgeType.EXPIRED) == {"lapsed"}
    assert view(BadgeType.AVAILABLE) == {"earned", "lapsed", "issued", "free"}
    assert view(BadgeType.AVAILABLE_TO_ISSUE) == {"gated"}
    assert view(None) == {"earned", "capped", "lapsed", "issued", "free"}
    assert view(None, group_id="g") == {"free"}
    both = customer_view(badges, earns, issues, 5, T0, None)
    assert len(both) == len(ids(both))
    earned = {x.badge.id: x.summary for x in both}
    assert earned["earned"] is not None and earned["free"] is None


def test_sorts() -> None:
    def listed(badge_id: str, rank: int | None, on: float | None, event: float | None = None) -> Listed:
        from badge_worker.domain.readmodel import EarnSummary

        summary = None if on is None else EarnSummary(1, on, event if event is not None else on, None)
        return Listed(badge(badge_id, badgeRank=rank, name=badge_id), summary)

    items = [listed("c", None, 5), listed("a", 2, None), listed("b", 1, 9, 1), listed("d", None, None)]
    assert [x.badge.id for x in sort_view(items, SortOn.RANK)] == ["b", "a", "c", "d"]
    assert [x.badge.id for x in sort_view(items, SortOn.LAST_EARNED_ON_DATE)] == ["b", "c", "a", "d"]
    assert [x.badge.id for x in sort_view(items, SortOn.LAST_EARNED_EVENT_DATE)] == ["c", "b", "a", "d"]


def test_cycle_ranges_and_pages() -> None:
    b = badge("a", startOn=T0 - 10 * DAY, customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_WINDOW", "durationType": "DAYS", "refreshRate": 1,
         "maxEarnLimit": 1}], badgeConstraints=[
        {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "MONTHS", "refreshRate": 1, "maxEarnLimit": 1,
         "startDate": T0 - 5 * DAY, "endDate": T0 - DAY},
        {"constraintType": "BADGE_NO_LIMIT"}])
    daily, = cycle_ranges(b, ConstraintLevel.CUSTOMER, None, T0)
    assert daily.count == 11
    cycles = cycles_page([daily], 0, 100)
    assert [c.start for c in cycles] == [T0 - k * DAY for k in range(10, -1, -1)][::-1]  # newest first
    assert cycles[0].start <= T0 < cycles[0].end and cycles[-1].start == T0 - 10 * DAY
    monthly, = cycle_ranges(b, ConstraintLevel.BADGE, None, T0)
    assert monthly.count == 1 and monthly.cycle(monthly.last).start == T0 - 5 * DAY  # it ended at its endDate
    both = cycle_ranges(b, ConstraintLevel.ALL, T0 - 2.5 * DAY, T0)
    # 4 daily cycles touch [T0 - 2.5 days, T0] (the last starts at T0), and the month that ended at T0 - 1 day
    assert [r.count for r in both] == [4, 1] and [r.level for r in both] == [ConstraintLevel.CUSTOMER,
                                                                           ConstraintLevel.BADGE]
    pages = [cycles_page(both, p, 2) for p in range(4)]
    assert [len(p) for p in pages] == [2, 2, 1, 0]
    flat = [c for p in pages for c in p]
    assert [c.level for c in flat] == [ConstraintLevel.CUSTOMER] * 4 + [ConstraintLevel.BADGE]
    assert cycle_ranges(b, ConstraintLevel.BADGE, T0, T0)[0].count == 0  # after its endDate


@given(st.integers(min_value=1, max_value=40), st.sampled_from(["DAYS", "WEEKS", "MONTHS"]),
       st.floats(min_value=0, max_value=400 * DAY), st.floats(min_value=0, max_value=400 * DAY))
def test_a_page_is_the_slice_of_all_cycles(rate: int, unit: str, a: float, b: float) -> None:
    start, end = T0 - max(a, b), T0 - min(a, b)
    badge_ = badge("p", startOn=T0 - 800 * DAY, badgeConstraints=[
        {"constraintType": "BADGE_FIXED_WINDOW", "durationType": unit, "refreshRate": rate, "maxEarnLimit": 1}])
    ranges = cycle_ranges(badge_, ConstraintLevel.ALL, start, end)
    every = cycles_page(ranges, 0, 10**6)
    assert len(every) == sum(r.count for r in ranges)
    assert every[0].start <= end < every[0].end and every[-1].start <= start < every[-1].end
    assert all(x.start == y.end for x, y in itertools.pairwise(every))  # adjacent, newest first
    assert cycles_page(ranges, 1, 3) == every[3:6]
