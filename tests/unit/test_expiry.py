import pytest

from badge_worker.domain.expiry import expires_on
from badge_worker.domain.models import BadgeDefinition, Expiry

BADGE = BadgeDefinition.model_validate({"id": "b", "orgId": 1, "startOn": 1_700_000_000, "expiresOn": 1_800_000_000})
T = 1_704_067_200.0  # 2024-01-01T00:00:00Z


@pytest.mark.parametrize(("rule", "expected"), [
    (None, None),
    ({"expiryType": "NEVER"}, None),
    ({"expiryType": "RELATIVE", "relativeExpirytype": "DAYS", "value": 2}, T + 2 * 86400),
    ({"expiryType": "RELATIVE", "relativeExpirytype": "WEEKS", "value": 1}, T + 7 * 86400),
    ({"expiryType": "RELATIVE", "relativeExpirytype": "MONTHS", "value": 1}, 1_706_745_600.0),  # Feb 1
    ({"expiryType": "ABSOLUTE", "type": "FIXED_DATE", "expiresOn": "2025-01-01T00:00:00Z"}, 1_735_689_600.0),
    ({"expiryType": "ABSOLUTE", "type": "WITH_BADGE_META", "expiresOn": None}, 1_800_000_000.0),
    ({"expiryType": "ABSOLUTE", "expireWithBadgeMeta": True}, 1_800_000_000.0),
])
def test_expiry_rules(rule: dict[str, object] | None, expected: float | None) -> None:
    parsed = None if rule is None else Expiry.model_validate(rule)
    assert expires_on(parsed, BADGE, T) == expected
