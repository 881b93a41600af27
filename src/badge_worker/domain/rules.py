"""Decisions as pure functions: command + badge + customer state + counts -> effect or rejection.

`now` is the Kafka timestamp of the message, so that a redelivered or replayed message is
judged exactly as it was the first time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from badge_worker.domain.commands import Command, CommandType, Owner
from badge_worker.domain.errors import ErrorCode, Rejection, reject
from badge_worker.domain.expiry import expires_on
from badge_worker.domain.models import BadgeDefinition, EarnType
from badge_worker.domain.timeutil import DAY, iso
from badge_worker.domain.windows import LimitCheck, Scope, limit_checks, next_room

FUTURE_TOLERANCE = DAY  # an event may be at most 24 h after the message time


class EarnStatus:
    PENDING = "PENDING"  # written before the limits are taken; counts as taken on rebuild
    ACTIVE = "ACTIVE"
    REJECTED = "REJECTED"
    REVOKED = "REVOKED"


@dataclass(frozen=True)
class IssueRecord:
    issuedId: str
    issuedOn: float
    expiresOn: float | None
    active: bool = True

    def valid_at(self, t: float) -> bool:
        return self.active and self.issuedOn <= t and (self.expiresOn is None or t <= self.expiresOn)


@dataclass(frozen=True)
class EarnedRecord:
    earnedBadgeId: str
    customerId: int
    badgeMetaId: str
    status: str


@dataclass(frozen=True)
class ClaimPlan:
    owner: Owner
    active: bool  # True for claim, False for unclaim
    changes: bool  # False when the badge already is in that state


@dataclass(frozen=True)
class IssuePlan:
    event_ts: float
    expires_on: float | None


@dataclass(frozen=True)
class EarnPlan:
    event_ts: float
    expires_on: float | None
    issued_id: str | None
    checks: tuple[LimitCheck, ...]


@dataclass(frozen=True)
class RevokeIssuePlan:
    issued_ids: tuple[str, ...]


@dataclass(frozen=True)
class RevokeEarnPlan:
    earned_badge_id: str


@dataclass(frozen=True)
class LimitUsage:
    """What a counter holds now; for rolling windows also the event that must leave first."""

    count: int
    blocking_event: float | None = None


def event_time(cmd: Command, now: float) -> float:
    return cmd.eventDate if cmd.eventDate is not None else now


def _find_badge(cmd: Command, badge: BadgeDefinition | None) -> Rejection | None:
    if badge is None or badge.orgId != cmd.orgId:
        return reject(ErrorCode.BADGE_NOT_FOUND, badgeMetaId=cmd.badgeMetaId)
    return None


def _live(badge: BadgeDefinition, now: float) -> Rejection | None:
    if not badge.active:
        return reject(ErrorCode.BADGE_NOT_LIVE, "the badge is not active")
    if badge.startOn is not None and now < badge.startOn:
        return reject(ErrorCode.BADGE_NOT_LIVE, f"the badge starts on {iso(badge.startOn)}")
    if badge.expiresOn is not None and now > badge.expiresOn:
        return reject(ErrorCode.BADGE_NOT_LIVE, f"the badge ended on {iso(badge.expiresOn)}")
    return None


def _owner_allowed(badge: BadgeDefinition, owner: Owner | None, need_claim: bool) -> Rejection | None:
    if owner is None:
        return None  # the MemberCare path: no owner, no claim needed
    allowed = badge.ownership.allowed_owner_types()
    if allowed is not None and owner.ownerType not in allowed:
        return reject(ErrorCode.OWNER_TYPE_NOT_ALLOWED, f"{owner.ownerType.value} is not in "
                      f"{sorted(a.value for a in allowed)}", ownerType=owner.ownerType.value)
    if need_claim and not badge.ownership.has_active_claim(owner.ownerType, owner.referenceId):
        return reject(ErrorCode.OWNER_HAS_NO_CLAIM, f"{owner.ownerType.value}/{owner.referenceId}",
                      ownerType=owner.ownerType.value, referenceId=owner.referenceId)
    return None


def _in_badge_validity(badge: BadgeDefinition, t: float) -> Rejection | None:
    if (badge.startOn is not None and t < badge.startOn) or (
        badge.expiresOn is not None and t > badge.expiresOn
    ):
        return reject(ErrorCode.EVENT_OUTSIDE_VALIDITY,
                      f"{iso(t)} is not within [{iso(badge.startOn)}, {iso(badge.expiresOn)}]")
    return None


def _common(cmd: Command, badge: BadgeDefinition | None, now: float
            ) -> tuple[BadgeDefinition, float] | Rejection:
    """404, 815, 750, 832, 810: the checks shared by issue and earn, in that order."""
    missing = _find_badge(cmd, badge)
    if missing is not None:
        return missing
    assert badge is not None
    problem = _live(badge, now)
    if problem is not None:
        return problem
    t = event_time(cmd, now)
    if t > now + FUTURE_TOLERANCE:
        return reject(ErrorCode.EVENT_TOO_FAR_IN_FUTURE, f"{iso(t)} is after {iso(now + FUTURE_TOLERANCE)}")
    problem = _owner_allowed(badge, cmd.owner, need_claim=True)
    return problem if problem is not None else (badge, t)


def decide_claim(cmd: Command, badge: BadgeDefinition | None) -> ClaimPlan | Rejection:
    missing = _find_badge(cmd, badge)
    if missing is not None:
        return missing
    assert badge is not None and cmd.owner is not None
    activate = cmd.type is CommandType.CLAIM
    if activate:
        problem = _owner_allowed(badge, cmd.owner, need_claim=False)
        if problem is not None:
            return problem
    holds = badge.ownership.has_active_claim(cmd.owner.ownerType, cmd.owner.referenceId)
    return ClaimPlan(owner=cmd.owner, active=activate, changes=holds != activate)


def decide_issue(cmd: Command, badge: BadgeDefinition | None, issues: Sequence[IssueRecord],
                 now: float) -> IssuePlan | Rejection:
    common = _common(cmd, badge, now)
    if isinstance(common, Rejection):
        return common
    badge, t = common
    if badge.earnType is not EarnType.ISSUE_EARN:
        return reject(ErrorCode.INVALID_VALUE, "issue applies only to ISSUE_EARN badges",
                      field="badgeMetaId")
    problem = _in_badge_validity(badge, t)
    if problem is not None:
        return problem
    current = next((i for i in issues if i.active and (i.expiresOn is None or i.expiresOn > t)), None)
    if current is not None:
        return reject(ErrorCode.ISSUE_ALREADY_ACTIVE, issuedId=current.issuedId)
    return IssuePlan(event_ts=t, expires_on=expires_on(badge.issuedBadgeExpiry, badge, t))


def decide_earn(cmd: Command, badge: BadgeDefinition | None, issues: Sequence[IssueRecord],
                now: float) -> EarnPlan | Rejection:
    common = _common(cmd, badge, now)
    if isinstance(common, Rejection):
        return common
    badge, t = common
    assert cmd.customerId is not None
    issued_id: str | None = None
    if badge.earnType is EarnType.ISSUE_EARN:
        active = [i for i in issues if i.active]
        if not active:
            return reject(ErrorCode.ISSUE_REQUIRED)
        usable = next((i for i in active if i.valid_at(t)), None)
        if usable is None:
            return reject(ErrorCode.EVENT_OUTSIDE_VALIDITY, f"{iso(t)} is outside the issue's validity",
                          issuedId=active[0].issuedId)
        issued_id = usable.issuedId
    else:
        problem = _in_badge_validity(badge, t)
        if problem is not None:
            return problem
    return EarnPlan(event_ts=t, expires_on=expires_on(badge.earnedBadgeExpiry, badge, t),
                    issued_id=issued_id, checks=tuple(limit_checks(badge, cmd.customerId, t)))


def decide_revoke_issue(cmd: Command, badge: BadgeDefinition | None,
                        issues: Sequence[IssueRecord]) -> RevokeIssuePlan | Rejection:
    missing = _find_badge(cmd, badge)
    if missing is not None:
        return missing
    active = [i for i in issues if i.active and (cmd.issuedId is None or i.issuedId == cmd.issuedId)]
    if not active:
        what = f"issue {cmd.issuedId}" if cmd.issuedId else "an active issue"
        return reject(ErrorCode.BADGE_NOT_FOUND, f"{what} of this badge for customer {cmd.customerId} "
                      "is not found", issuedId=cmd.issuedId)
    return RevokeIssuePlan(tuple(i.issuedId for i in active))


def decide_revoke_earn(cmd: Command, badge: BadgeDefinition | None,
                       earned: EarnedRecord | None) -> RevokeEarnPlan | Rejection:
    missing = _find_badge(cmd, badge)
    if missing is not None:
        return missing
    if earned is None or earned.customerId != cmd.customerId or earned.badgeMetaId != cmd.badgeMetaId:
        return reject(ErrorCode.BADGE_NOT_FOUND, f"earned badge {cmd.earnedBadgeId} is not found",
                      earnedBadgeId=cmd.earnedBadgeId)
    if earned.status != EarnStatus.ACTIVE:
        return reject(ErrorCode.EARNED_BADGE_NOT_ACTIVE, f"status is {earned.status}",
                      earnedBadgeId=earned.earnedBadgeId)
    return RevokeEarnPlan(earned.earnedBadgeId)


def limit_rejection(check: LimitCheck, usage: LimitUsage) -> Rejection:
    """830/831 naming the constraint, its window, and when the window next has room."""
    code = ErrorCode.CUSTOMER_LIMIT_REACHED if check.scope is Scope.CUSTOMER else ErrorCode.BADGE_LIMIT_REACHED
    room = next_room(check, usage.blocking_event)
    window = "lifetime" if check.window_start is None else f"{iso(check.window_start)} - {iso(check.window_end)}"
    return reject(
        code,
        f"{check.constraint_type.value} allows {check.limit} in {window}; next room "
        f"{iso(room) if room is not None else 'never'}",
        constraintType=check.constraint_type.value,
        constraintId=check.constraint_id,
        maxEarnLimit=check.limit,
        count=usage.count,
        windowStart=check.window_start,
        windowStartISO=iso(check.window_start),
        windowEnd=check.window_end,
        windowEndISO=iso(check.window_end),
        nextAvailableOn=room,
        nextAvailableOnISO=iso(room),
    )


def check_limits(checks: Sequence[LimitCheck], usage: Mapping[str, LimitUsage]) -> Rejection | None:
    """The first check whose counter is already at its limit, as a rejection; None if all pass.

    This is the rule the Redis script (reserve.lua) applies atomically.
    """
    for check in checks:
        current = usage.get(check.counter, LimitUsage(0))
        if current.count >= check.limit:
            return limit_rejection(check, current)
    return None
