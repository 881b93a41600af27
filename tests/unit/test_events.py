"""The notification events of CONTRACT.md section 7 (domain/events.py), without servers."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from badge_worker.domain import events
from badge_worker.domain.events import EVENT_KEY, EventName, event_id
from badge_worker.domain.models import BadgeDefinition
from badge_worker.domain.outcomes import envelope
from badge_worker.domain.timeutil import DAY, iso
from badge_worker.domain.windows import limit_checks

T = 1_726_204_639.822  # 2024-09-13T05:17:19.822Z
ORG = 100458
OWNER = {"ownerType": "Loyalty", "referenceId": "prog-1"}
ENVELOPE_KEYS = {"eventName", "eventId", "orgId", "createdAt", "requestId", "data"}

orgs = st.integers(min_value=-(2**63), max_value=2**63 - 1)
request_ids = st.text(min_size=1, max_size=60)
names = st.sampled_from(list(EventName))


# ------------------------------------------------------------------ eventId
@given(orgs, request_ids, names)
def test_the_event_id_is_a_uuid5_that_depends_only_on_org_request_and_name(org: int, rid: str,
                                                                           name: EventName) -> None:
    first = event_id(org, rid, name)
    assert first == event_id(org, rid, name)
    parsed = uuid.UUID(first)
    assert parsed.version == 5 and str(parsed) == first


@given(st.tuples(orgs, request_ids, names), st.tuples(orgs, request_ids, names))
def test_distinct_org_request_name_triples_get_distinct_event_ids(
        a: tuple[int, str, EventName], b: tuple[int, str, EventName]) -> None:
    assert (event_id(*a) == event_id(*b)) == (a == b)


def test_colons_in_a_request_id_cannot_make_two_triples_collide() -> None:
    assert event_id(1, "2:x", EventName.EARNED) != event_id(12, "x", EventName.EARNED)
    assert event_id(1, "a:badgeIssued", EventName.EARNED) != event_id(1, "a", EventName.ISSUED)


def test_the_namespace_is_pinned() -> None:
    """Changing it would give every event a new id: replays would look like new events."""
    assert event_id(ORG, "r-1", EventName.EARNED) == str(uuid.uuid5(events.EVENT_NAMESPACE,
                                                                    f"{ORG}:r-1:badgeEarned"))
    assert str(events.EVENT_NAMESPACE) == "6f0d7c52-3b8e-5a41-9c2e-b1d4a7e90f13"


# ------------------------------------------------------------------ earnConstraints
BADGE = BadgeDefinition.model_validate({
    "id": "b", "orgId": ORG, "startOn": T - 400 * DAY,
    "customerConstraints": [
        {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 3},
        {"constraintType": "CUSTOMER_BADGE_ROLLING_WINDOW", "maxEarnForDays": 2, "rollForDays": 1,
         "maxEarnForWeeks": 5, "rollForWeeks": 2},
        {"constraintType": "CUSTOMER_BADGE_NO_LIMIT"},
    ],
    "badgeConstraints": [
        {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "refreshRate": 1, "maxEarnLimit": 100,
         "startDate": T - 10.5 * DAY},
        {"constraintType": "BADGE_ROLLING_WINDOW", "rollType": "DAYS", "rollValue": 7, "maxEarnLimit": 50},
    ],
})


def test_one_constraint_entry_per_limit_check_with_its_level_window_and_count() -> None:
    checks = limit_checks(BADGE, 7, T)
    got = events.earn_constraints(checks, [1, 2, 3, 4, 5])
    assert got == [
        {"constraintLevel": "CUSTOMER", "constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 3,
         "currentEarnCount": 1, "windowStart": None, "windowEnd": None},
        {"constraintLevel": "CUSTOMER", "constraintType": "CUSTOMER_BADGE_ROLLING_WINDOW", "maxEarnLimit": 2,
         "currentEarnCount": 2, "windowStart": iso(T - DAY), "windowEnd": iso(T)},
        {"constraintLevel": "CUSTOMER", "constraintType": "CUSTOMER_BADGE_ROLLING_WINDOW", "maxEarnLimit": 5,
         "currentEarnCount": 3, "windowStart": iso(T - 14 * DAY), "windowEnd": iso(T)},
        {"constraintLevel": "BADGE", "constraintType": "BADGE_FIXED_WINDOW", "maxEarnLimit": 100,
         "currentEarnCount": 4, "windowStart": iso(T - 0.5 * DAY), "windowEnd": iso(T + 0.5 * DAY)},
        {"constraintLevel": "BADGE", "constraintType": "BADGE_ROLLING_WINDOW", "maxEarnLimit": 50,
         "currentEarnCount": 5, "windowStart": iso(T - 7 * DAY), "windowEnd": iso(T)},
    ]


def test_an_earn_without_limits_names_no_constraint() -> None:
    free = BadgeDefinition.model_validate({"id": "f", "orgId": ORG, "customerConstraints": [
        {"constraintType": "CUSTOMER_BADGE_NO_LIMIT"}]})
    assert events.earn_constraints(limit_checks(free, 7, T), []) == []


def test_counts_must_match_the_checks() -> None:
    with pytest.raises(ValueError):
        events.earn_constraints(limit_checks(BADGE, 7, T), [1, 2])


# ------------------------------------------------------------------ shapes
def earned(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict(customer_id=62090013, badge_id="badge-1", earn_id="e" * 24, earned_on=T - 60,
                                  event_date=T - 120,
                                  issued_id=None, expires_on=T + 7 * DAY, triggered_by=OWNER,
                                  constraints=events.earn_constraints(limit_checks(BADGE, 7, T), [1, 1, 1, 9, 9]))
    values.update(overrides)
    return events.badge_earned(ORG, "r-1", T, **values)


def test_badge_earned() -> None:
    event = earned()
    assert set(event) == ENVELOPE_KEYS
    assert (event["eventName"], event["orgId"], event["requestId"]) == ("badgeEarned", ORG, "r-1")
    assert event["eventId"] == event_id(ORG, "r-1", EventName.EARNED)
    assert event["createdAt"] == "2024-09-13T05:17:19.822Z"
    data = event["data"]
    assert set(data) == {"customerId", "badgeId", "earnId", "earnedOn", "earnedOnEpochMs", "earnEventDate",
                         "earnEventDateEpochMs", "issuedId", "expiresOn", "expiresOnISO", "triggeringActivity",
                         "earnConstraints"}
    assert (data["customerId"], data["badgeId"], data["earnId"]) == (62090013, "badge-1", "e" * 24)
    assert data["earnedOn"] == "2024-09-13T05:16:19.822Z" and data["earnedOnEpochMs"] == 1_726_204_579_822
    assert data["earnEventDate"] == "2024-09-13T05:15:19.822Z" and data["earnEventDateEpochMs"] == 1_726_204_519_822
    assert data["expiresOn"] == T + 7 * DAY and data["expiresOnISO"] == "2024-09-20T05:17:19.822Z"
    assert data["issuedId"] is None
    assert data["triggeringActivity"] == OWNER
    assert [c["currentEarnCount"] for c in data["earnConstraints"]] == [1, 1, 1, 9, 9]


def test_badge_earned_of_an_issue_earn_badge_without_owner_limits_or_expiry() -> None:
    data = earned(issued_id="i" * 24, expires_on=None, triggered_by=None, constraints=[])["data"]
    assert data["issuedId"] == "i" * 24
    assert data["expiresOn"] is None and data["expiresOnISO"] is None
    assert data["triggeringActivity"] is None and data["earnConstraints"] == []


def test_triggering_activity_keeps_only_the_owner() -> None:
    stored = {**OWNER, "isActive": True}  # whatever else a stored document carries
    assert earned(triggered_by=stored)["data"]["triggeringActivity"] == OWNER


def test_badge_issued() -> None:
    event = events.badge_issued(ORG, "i-1", T, customer_id=5, badge_id="badge-2", issual_id="a" * 24,
                                issued_on=T - 1, expires_on=None, triggered_by=None)
    assert set(event) == ENVELOPE_KEYS
    assert event["eventName"] == "badgeIssued" and event["eventId"] == event_id(ORG, "i-1", EventName.ISSUED)
    assert event["data"] == {"customerId": 5, "badgeId": "badge-2", "issualId": "a" * 24,
                             "issuedOn": iso(T - 1), "expiresOn": None, "expiresOnISO": None,
                             "triggeringActivity": None}


def test_badge_earn_revoked() -> None:
    event = events.badge_earn_revoked(ORG, "v-1", T, customer_id=5, badge_id="badge-1", earn_id="e" * 24)
    assert set(event) == ENVELOPE_KEYS
    assert event["eventName"] == "badgeEarnRevoked"
    assert event["eventId"] == event_id(ORG, "v-1", EventName.EARN_REVOKED)
    assert event["data"] == {"customerId": 5, "badgeId": "badge-1", "earnId": "e" * 24, "revokedOn": iso(T)}


def test_badge_issue_revoked_names_every_issue_and_the_first() -> None:
    event = events.badge_issue_revoked(ORG, "v-2", T, customer_id=5, badge_id="badge-2",
                                       issual_ids=["a" * 24, "b" * 24])
    assert set(event) == ENVELOPE_KEYS
    assert event["eventName"] == "badgeIssueRevoked"
    assert event["eventId"] == event_id(ORG, "v-2", EventName.ISSUE_REVOKED)
    assert event["data"] == {"customerId": 5, "badgeId": "badge-2", "issualId": "a" * 24,
                             "issualIds": ["a" * 24, "b" * 24], "revokedOn": iso(T)}
    with pytest.raises(ValueError):
        events.badge_issue_revoked(ORG, "v-3", T, customer_id=5, badge_id="badge-2", issual_ids=[])


@given(orgs, request_ids, st.floats(min_value=-2e9, max_value=2e11), st.integers(-(2**63), 2**63 - 1))
def test_events_are_deterministic_and_json(org: int, rid: str, now: float, customer: int) -> None:
    def build() -> list[dict[str, Any]]:
        return [events.badge_earned(org, rid, now, customer_id=customer, badge_id="b", earn_id="e", earned_on=now,
                                    event_date=now, issued_id=None, expires_on=None, triggered_by=None, constraints=[]),
                events.badge_issued(org, rid, now, customer_id=customer, badge_id="b", issual_id="i", issued_on=now,
                                    expires_on=now, triggered_by=OWNER),
                events.badge_earn_revoked(org, rid, now, customer_id=customer, badge_id="b", earn_id="e"),
                events.badge_issue_revoked(org, rid, now, customer_id=customer, badge_id="b", issual_ids=["i"])]

    first = build()
    assert first == build()
    assert len({e["eventId"] for e in first}) == 4  # one requestId, four names: four ids
    for event in first:
        assert orjson.loads(orjson.dumps(event)) == event


# ------------------------------------------------------------------ riding with the outcome
def test_the_event_rides_with_the_outcome_and_is_split_off_before_publishing() -> None:
    outcome = envelope("earn", ORG, "r-1", {"badgeMetaId": "badge-1", "earnedBadgeId": "e" * 24})
    event = earned()
    carried = events.attach(outcome, event)
    assert carried[EVENT_KEY] == event and EVENT_KEY not in outcome  # the original is not changed
    public, found = events.split(carried)
    assert found == event
    assert orjson.dumps(public) == orjson.dumps(outcome)  # byte for byte the outcome of the contract
    # a stored round trip (the Redis cache, MongoDB) keeps it
    assert events.split(orjson.loads(orjson.dumps(carried))) == (outcome, event)


def test_an_outcome_without_event_splits_to_itself() -> None:
    rejection = envelope("earn", ORG, "r-2", None)
    assert events.attach(rejection, None) is rejection
    assert events.split(rejection) == (rejection, None)
    assert events.split({**rejection, EVENT_KEY: "not an event"}) == (rejection, None)
