"""When an earned or issued badge expires (CONTRACT.md section 4, Expiry)."""

from __future__ import annotations

from badge_worker.domain.models import BadgeDefinition, Expiry, ExpiryType
from badge_worker.domain.timeutil import add_units


def expires_on(rule: Expiry | None, badge: BadgeDefinition, event_ts: float) -> float | None:
    """RELATIVE: event + value units; ABSOLUTE: its date or the badge's; NEVER/None: None."""
    if rule is None or rule.expiryType is ExpiryType.NEVER:
        return None
    if rule.expiryType is ExpiryType.RELATIVE:
        assert rule.relativeExpirytype is not None and rule.value is not None
        return add_units(event_ts, rule.relativeExpirytype, rule.value)
    if rule.expireWithBadgeMeta or (rule.type or "").upper() == "WITH_BADGE_META":
        return badge.expiresOn
    return rule.expiresOn
