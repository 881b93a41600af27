from dataclasses import replace

import pytest

from badge_worker.domain import rules
from badge_worker.domain.commands import Command, CommandType, Owner
from badge_worker.domain.errors import ErrorCode, Rejection
from badge_worker.domain.models import BadgeDefinition, OwnerType
from badge_worker.domain.rules import EarnedRecord, IssueRecord, LimitUsage
from badge_worker.domain.timeutil import DAY
from badge_worker.domain.windows import limit_checks

START, END = 1_700_000_000.0, 1_800_000_000.0
NOW = 1_750_000_000.0
LOYALTY = Owner(OwnerType.LOYALTY, "prog-1")


def badge(**extra: object) -> BadgeDefinition:
    body: dict[str, object] = {
        "id": "b1", "orgId": 7, "startOn": START, "expiresOn": END, "earnType": "EARN",
        "ownership": {"restrictedToOwners": ["Loyalty", "Milestones"],
                      "claims": [{"ownerType": "Loyalty", "referenceId": "prog-1", "isActive": True},
                                 {"ownerType": "Milestones", "referenceId": "old", "isActive": False}]},
        "earnedBadgeExpiry": {"expiryType": "RELATIVE", "relativeExpirytype": "DAYS", "value": 2},
        "issuedBadgeExpiry": {"expiryType": "RELATIVE", "relativeExpirytype": "DAYS", "value": 10},
        "customerConstraints": [{"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 2}],
        "badgeConstraints": [{"constraintType": "BADGE_ROLLING_WINDOW", "rollType": "DAYS", "rollValue": 1,
                              "maxEarnLimit": 5}],
    }
    body.update(extra)
    return BadgeDefinition.model_validate(body)


def earn(**extra: object) -> Command:
    base = Command(type=CommandType.EARN, orgId=7, badgeMetaId="b1", requestId="r1", customerId=99)
    return replace(base, **extra)  # type: ignore[arg-type]


def code(result: object) -> int:
    assert isinstance(result, Rejection), result
    return int(result.code)


# ---------------------------------------------------------------- earn


def test_earn_accepted_with_expiry_and_checks() -> None:
    plan = rules.decide_earn(earn(owner=LOYALTY), badge(), [], NOW)
    assert isinstance(plan, rules.EarnPlan)
    assert plan.event_ts == NOW and plan.expires_on == NOW + 2 * DAY and plan.issued_id is None
    assert [c.limit for c in plan.checks] == [2, 5]


def test_earn_without_owner_needs_no_claim() -> None:
    assert isinstance(rules.decide_earn(earn(), badge(ownership={"restrictedToOwners": ["Journeys"]}), [], NOW),
                      rules.EarnPlan)


@pytest.mark.parametrize(("cmd", "the_badge", "expected"), [
    (earn(), None, 404),
    (earn(orgId=8), badge(), 404),  # another org's badge is not found
    (earn(), badge(active=False), 815),
    (earn(eventDate=START + 10), badge(startOn=NOW + 1), 815),  # processed before the badge starts
    (earn(eventDate=START + 10), badge(expiresOn=NOW - 1), 815),  # processed after it ended
    (earn(eventDate=NOW + DAY + 0.001), badge(), 750),
    (earn(owner=Owner(OwnerType.JOURNEYS, "j")), badge(), 832),
    (earn(owner=Owner(OwnerType.LOYALTY, "other")), badge(), 810),
    (earn(owner=Owner(OwnerType.MILESTONES, "old")), badge(), 810),  # claim inactive
    (earn(eventDate=START - 0.001), badge(), 816),
    (earn(eventDate=NOW), badge(expiresOn=NOW - 0.5, startOn=START), 815),
])
def test_earn_rejections(cmd: Command, the_badge: BadgeDefinition | None, expected: int) -> None:
    assert code(rules.decide_earn(cmd, the_badge, [], NOW)) == expected


def test_earn_boundaries_are_inclusive() -> None:
    assert isinstance(rules.decide_earn(earn(eventDate=START), badge(), [], NOW), rules.EarnPlan)
    assert isinstance(rules.decide_earn(earn(eventDate=NOW + DAY), badge(), [], NOW), rules.EarnPlan)
    at_end = badge(expiresOn=NOW)
    assert isinstance(rules.decide_earn(earn(eventDate=NOW), at_end, [], NOW), rules.EarnPlan)
    assert isinstance(rules.decide_earn(earn(), badge(startOn=NOW), [], NOW), rules.EarnPlan)  # live at startOn
    assert code(rules.decide_earn(earn(eventDate=NOW + 1), at_end, [], NOW)) == 816


def test_issue_earn_needs_a_valid_issue() -> None:
    ie = badge(earnType="ISSUE_EARN")
    assert code(rules.decide_earn(earn(), ie, [], NOW)) == 811
    assert code(rules.decide_earn(earn(), ie, [IssueRecord("i0", NOW - 5, None, active=False)], NOW)) == 811
    expired = IssueRecord("i1", NOW - 20 * DAY, NOW - 10 * DAY)
    rejection = rules.decide_earn(earn(), ie, [expired], NOW)
    assert code(rejection) == 816
    future = IssueRecord("i2", NOW + 10, None)
    assert code(rules.decide_earn(earn(), ie, [future], NOW)) == 816
    good = IssueRecord("i3", NOW - DAY, NOW)
    plan = rules.decide_earn(earn(eventDate=NOW), ie, [expired, good], NOW)
    assert isinstance(plan, rules.EarnPlan) and plan.issued_id == "i3"
    # ISSUE_EARN validity is the issue's, not the badge's
    plan = rules.decide_earn(earn(eventDate=START - 1), ie, [IssueRecord("i4", START - 10, None)], NOW)
    assert isinstance(plan, rules.EarnPlan)


# ---------------------------------------------------------------- issue


def test_issue() -> None:
    ie = badge(earnType="ISSUE_EARN")
    cmd = earn(type=CommandType.ISSUE)
    plan = rules.decide_issue(cmd, ie, [], NOW)
    assert isinstance(plan, rules.IssuePlan) and plan.expires_on == NOW + 10 * DAY
    assert code(rules.decide_issue(cmd, ie, [IssueRecord("i", NOW - 1, None)], NOW)) == 1040
    assert code(rules.decide_issue(cmd, ie, [IssueRecord("i", NOW - 9, NOW + 1)], NOW)) == 1040
    # an expired or revoked issue does not block a new one
    assert isinstance(rules.decide_issue(cmd, ie, [IssueRecord("i", NOW - 9, NOW - 1)], NOW), rules.IssuePlan)
    assert isinstance(rules.decide_issue(cmd, ie, [IssueRecord("i", NOW - 9, None, False)], NOW), rules.IssuePlan)
    assert code(rules.decide_issue(cmd, badge(), [], NOW)) == 400  # EARN badges are not issued
    assert code(rules.decide_issue(replace(cmd, eventDate=END + 1), ie, [], END)) == 816
    assert code(rules.decide_issue(cmd, None, [], NOW)) == 404
    assert code(rules.decide_issue(replace(cmd, owner=Owner(OwnerType.JOURNEYS, "j")), ie, [], NOW)) == 832


# ---------------------------------------------------------------- claims


def test_claims() -> None:
    claim = Command(type=CommandType.CLAIM, orgId=7, badgeMetaId="b1", owner=Owner(OwnerType.MILESTONES, "m1"))
    plan = rules.decide_claim(claim, badge())
    assert isinstance(plan, rules.ClaimPlan) and plan.active and plan.changes
    again = rules.decide_claim(replace(claim, owner=LOYALTY), badge())
    assert isinstance(again, rules.ClaimPlan) and not again.changes  # already active: no change
    assert code(rules.decide_claim(replace(claim, owner=Owner(OwnerType.JOURNEYS, "j")), badge())) == 832
    assert code(rules.decide_claim(claim, None)) == 404
    unclaim = rules.decide_claim(replace(claim, type=CommandType.UNCLAIM, owner=LOYALTY), badge())
    assert isinstance(unclaim, rules.ClaimPlan) and not unclaim.active and unclaim.changes
    nothing = rules.decide_claim(replace(claim, type=CommandType.UNCLAIM), badge())
    assert isinstance(nothing, rules.ClaimPlan) and not nothing.changes


# ---------------------------------------------------------------- revokes


def test_revoke_issue() -> None:
    cmd = earn(type=CommandType.REVOKE_ISSUE)
    issues = [IssueRecord("i1", NOW, None), IssueRecord("i2", NOW, None, active=False)]
    plan = rules.decide_revoke_issue(cmd, badge(), issues)
    assert isinstance(plan, rules.RevokeIssuePlan) and plan.issued_ids == ("i1",)
    assert code(rules.decide_revoke_issue(replace(cmd, issuedId="i2"), badge(), issues)) == 404
    assert code(rules.decide_revoke_issue(cmd, badge(), [])) == 404
    assert code(rules.decide_revoke_issue(cmd, None, issues)) == 404


def test_revoke_earn() -> None:
    cmd = earn(type=CommandType.REVOKE_EARN, earnedBadgeId="e1")
    active = EarnedRecord("e1", 99, "b1", "ACTIVE")
    plan = rules.decide_revoke_earn(cmd, badge(), active)
    assert isinstance(plan, rules.RevokeEarnPlan) and plan.earned_badge_id == "e1"
    assert code(rules.decide_revoke_earn(cmd, badge(), replace(active, status="REVOKED"))) == 814
    assert code(rules.decide_revoke_earn(cmd, badge(), replace(active, status="REJECTED"))) == 814
    assert code(rules.decide_revoke_earn(cmd, badge(), None)) == 404
    assert code(rules.decide_revoke_earn(cmd, badge(), replace(active, customerId=5))) == 404
    assert code(rules.decide_revoke_earn(cmd, None, active)) == 404


# ---------------------------------------------------------------- limits


def test_check_limits_names_the_constraint_window_and_next_room() -> None:
    b = badge(badgeConstraints=[{"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS",
                                 "refreshRate": 1, "maxEarnLimit": 3, "startDate": START}])
    checks = limit_checks(b, 99, NOW)
    life, window = checks
    assert rules.check_limits(checks, {}) is None
    assert rules.check_limits(checks, {life.counter: LimitUsage(1), window.counter: LimitUsage(2)}) is None
    customer = rules.check_limits(checks, {life.counter: LimitUsage(2)})
    assert isinstance(customer, Rejection) and customer.code is ErrorCode.CUSTOMER_LIMIT_REACHED
    assert customer.detail["constraintType"] == "CUSTOMER_BADGE_FIXED_VALUE"
    assert customer.detail["nextAvailableOn"] is None and customer.detail["windowStart"] is None
    full = rules.check_limits(checks, {window.counter: LimitUsage(3)})
    assert isinstance(full, Rejection) and full.code is ErrorCode.BADGE_LIMIT_REACHED
    assert full.detail["windowStart"] <= NOW < full.detail["windowEnd"]
    assert full.detail["nextAvailableOn"] == full.detail["windowEnd"]
    assert full.detail["windowEndISO"].endswith("Z") and "BADGE_FIXED_WINDOW" in full.message


def test_rolling_rejection_says_when_the_oldest_event_leaves() -> None:
    checks = limit_checks(badge(), 99, NOW)
    roll = checks[1]
    rejection = rules.limit_rejection(roll, LimitUsage(5, NOW - 3600))
    assert rejection.detail["nextAvailableOn"] == NOW - 3600 + DAY
    assert rejection.detail["windowStart"] == NOW - DAY and rejection.detail["windowEnd"] == NOW
