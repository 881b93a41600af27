import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from badge_worker.domain.models import BadgeDefinition, Constraint, ConstraintType, EarnType, Expiry, OwnerType
from badge_worker.seedpages import badges_of, is_badge_payload, json_objects
from tests.seeds import all_examples, vendor_examples


def seed_badge_payloads() -> list[object]:
    return [obj for obj in all_examples() if is_badge_payload(obj)]


def test_seed_pages_hold_the_expected_examples() -> None:
    pages = vendor_examples()
    # 4 complete badge responses on the Get-badge page, 4 customer-badge responses
    assert sum(is_badge_payload(o) for o in pages["get-badge-by-id"]) == 4
    assert sum(is_badge_payload(o) for o in pages["get-badges-for-customer"]) == 4
    assert len(seed_badge_payloads()) == 8


def test_every_seed_badge_example_parses() -> None:
    parsed = [b for payload in seed_badge_payloads() for b in BadgeDefinition.from_payload(payload)]
    assert len(parsed) == 12
    ids = {b.id for b in parsed}
    assert {"662749408fe258516a88fe89", "662724bb8fe258516a88fde2", "67eb99516666db076c3c7519",
            "653dea07b3cda7078c7c68ee"} <= ids
    types = {c.constraintType for b in parsed for c in [*b.customerConstraints, *b.badgeConstraints]}
    assert types >= {ConstraintType.CUSTOMER_BADGE_FIXED_WINDOW, ConstraintType.BADGE_FIXED_WINDOW,
                     ConstraintType.CUSTOMER_BADGE_FIXED_VALUE, ConstraintType.BADGE_FIXED_VALUE,
                     ConstraintType.BADGE_ROLLING_WINDOW, ConstraintType.CUSTOMER_BADGE_ROLLING_WINDOW}
    assert len(badges_of(all_examples())) == len(ids)


def test_seed_details_are_read() -> None:
    by_id = {b.id: b for b in badges_of(all_examples())}
    og = by_id["662724bb8fe258516a88fde2"]
    assert og.startOn == pytest.approx(1707523237.192)
    assert og.earnedBadgeExpiry is not None and og.earnedBadgeExpiry.value == 2
    assert og.earnType is EarnType.EARN and og.active
    birthday = by_id["653dea07b3cda7078c7c68ee"]
    assert birthday.earnType is EarnType.ISSUE_EARN
    assert birthday.ownership.has_active_claim(OwnerType.LOYALTY, "626_TransactionAdd")
    assert not birthday.ownership.has_active_claim(OwnerType.JOURNEYS, "626")
    rolling = by_id["664442c560646c1208ede8f4"].customerConstraints[0]
    assert (rolling.maxEarnForDays, rolling.rollForDays, rolling.maxEarnForWeeks) == (10, 2, None)


def test_unknown_fields_survive_a_round_trip() -> None:
    for payload in seed_badge_payloads():
        for badge in BadgeDefinition.from_payload(payload):
            doc = badge.to_document()
            again = BadgeDefinition.model_validate(doc)
            assert again.to_document() == doc
    raw = {"id": "a", "orgId": 1, "brandNew": {"x": [1, 2]}, "benefits": [{"benefitType": "COUPON"}],
           "badgeConstraints": [{"constraintType": "BADGE_FIXED_VALUE", "maxEarnLimit": 3, "cycleStatus": "X"}]}
    doc = BadgeDefinition.model_validate(raw).to_document()
    assert doc["brandNew"] == {"x": [1, 2]}
    assert doc["benefits"] == [{"benefitType": "COUPON"}]
    assert doc["badgeConstraints"][0]["cycleStatus"] == "X"


def test_dates_may_be_iso_or_epoch() -> None:
    a = BadgeDefinition.model_validate({"id": "a", "orgId": 1, "startOn": "2024-05-27T09:51:27Z",
                                        "expiresOn": 1726804000})
    assert a.startOn == 1716803487.0
    assert a.expiresOn == 1726804000.0
    assert json.loads(json.dumps(a.to_document()))["startOn"] == 1716803487.0


def test_payload_shapes() -> None:
    bare = {"id": "a", "orgId": 1}
    assert [b.id for b in BadgeDefinition.from_payload(bare)] == ["a"]
    assert [b.id for b in BadgeDefinition.from_payload({"data": bare})] == ["a"]
    assert [b.id for b in BadgeDefinition.from_payload([bare, {"data": {**bare, "id": "b"}}])] == ["a", "b"]
    assert [b.id for b in BadgeDefinition.from_payload({"data": {"badges": [{"badgeMetaId": "c", "orgId": 1}]}})] \
        == ["c"]
    with pytest.raises(ValueError):
        BadgeDefinition.from_payload("nope")


@pytest.mark.parametrize("constraint", [
    {"constraintType": "BADGE_FIXED_VALUE"},
    {"constraintType": "BADGE_FIXED_WINDOW", "maxEarnLimit": 1},
    {"constraintType": "BADGE_FIXED_WINDOW", "maxEarnLimit": 1, "durationType": "DAYS", "refreshRate": 0},
    {"constraintType": "BADGE_ROLLING_WINDOW", "maxEarnLimit": 1, "rollType": "DAYS"},
    {"constraintType": "CUSTOMER_BADGE_ROLLING_WINDOW", "maxEarnForDays": 1},
    {"constraintType": "CUSTOMER_BADGE_ROLLING_WINDOW", "maxEarnForDays": 1, "rollForDays": 0},
    {"constraintType": "SOMETHING_ELSE", "maxEarnLimit": 1},
    {"constraintType": "BADGE_FIXED_WINDOW", "maxEarnLimit": 1, "durationType": "YEARS"},
])
def test_incomplete_constraints_are_refused(constraint: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        BadgeDefinition.model_validate({"id": "a", "orgId": 1, "badgeConstraints": [constraint]})


def test_duration_alias_and_no_limit() -> None:
    badge = BadgeDefinition.model_validate({"id": "a", "orgId": 1, "badgeConstraints": [
        {"constraintType": "BADGE_FIXED_WINDOW", "duration": "WEEKLY", "maxEarnLimit": 2},
        {"constraintType": "BADGE_NO_LIMIT"}]})
    assert badge.badgeConstraints[0].durationType is not None
    assert badge.badgeConstraints[0].durationType.value == "WEEKS"


@pytest.mark.parametrize("expiry", [
    {"expiryType": "RELATIVE", "value": 2},
    {"expiryType": "RELATIVE", "relativeExpirytype": "DAYS"},
    {"expiryType": "ABSOLUTE", "type": "FIXED_DATE"},
    {"expiryType": "SOMETIMES"},
])
def test_incomplete_expiry_is_refused(expiry: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Expiry.model_validate(expiry)


@pytest.mark.parametrize(("text", "owner"), [
    ("Loyalty", OwnerType.LOYALTY), ("LOYALTY", OwnerType.LOYALTY), ("loyalty_promotion", OwnerType.LOYALTY_PROMOTION),
    ("LOYALTY_PROMOTIONS", OwnerType.LOYALTY_PROMOTION), ("referral_campaigns", OwnerType.REFERRAL_CAMPAIGNS),
    ("Historical_Import", OwnerType.HISTORICAL_IMPORT), ("goodwill module", OwnerType.GOODWILL_MODULE),
])
def test_owner_types_match_case_insensitively(text: str, owner: OwnerType) -> None:
    assert OwnerType.parse(text) is owner


def test_owner_type_errors_and_restrictions() -> None:
    with pytest.raises(ValueError):
        OwnerType.parse("Bogus")
    with pytest.raises(ValueError):
        OwnerType.parse(3)
    badge = BadgeDefinition.model_validate({"id": "a", "orgId": 1, "ownership": {
        "restrictedToOwners": ["MILESTONES", "Unknown_Module"],
        "claims": [{"ownerType": "Milestones", "referenceId": 7, "isActive": False},
                   {"ownerType": "Nope", "referenceId": "x"}]}})
    assert badge.ownership.allowed_owner_types() == {OwnerType.MILESTONES}
    assert not badge.ownership.has_active_claim(OwnerType.MILESTONES, "7")  # inactive
    assert BadgeDefinition.model_validate({"id": "b", "orgId": 1}).ownership.allowed_owner_types() is None


def test_earn_type_spellings() -> None:
    assert EarnType.parse("ISSUE EARN") is EarnType.ISSUE_EARN
    assert EarnType.parse("issue_earn") is EarnType.ISSUE_EARN
    with pytest.raises(ValueError):
        EarnType.parse(1)


def test_nulls_in_seed_shapes_take_defaults() -> None:
    badge = BadgeDefinition.model_validate({"id": "a", "orgId": 1, "customerConstraints": None,
                                            "ownership": None, "active": None})
    assert badge.customerConstraints == [] and badge.active


def test_json_object_scanner_skips_truncated_snippets() -> None:
    text = 'prose {"a": 1} more "}" {"b": {"c": "}"}} "x": 1 }, {"broken": } {"d": [1]}'
    assert json_objects(text) == [{"a": 1}, {"b": {"c": "}"}}, {"d": [1]}]


# ---- constraint identity: the name of a constraint's counters (docs/counters.md)

FIXED_WINDOW = {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "WEEKS", "refreshRate": 2,
                "startDate": 1706702400, "startDayOfTheWeek": "MONDAY", "maxEarnLimit": 5, "endDate": 1800000000}
CUSTOMER_ROLLING = {"constraintType": "CUSTOMER_BADGE_ROLLING_WINDOW", "maxEarnForDays": 1, "rollForDays": 2,
                    "maxEarnForMonths": 3, "rollForMonths": 1}
BADGE_ROLLING = {"constraintType": "BADGE_ROLLING_WINDOW", "rollType": "DAYS", "rollValue": 7, "maxEarnLimit": 4}
LIFETIME = {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 2}


def ident(body: dict[str, object]) -> str:
    return Constraint.model_validate(body).identity()


_KEEPING_EDITS = [
    {"endDate": 1900000000}, {"endDate": None}, {"cycleStatus": "ACTIVE"},
    {"currentCycle": {"startDate": 1, "endDate": 2}}, {"name": "renamed"}, {"somethingNew": [1, 2]},
]


@pytest.mark.parametrize(("body", "edit"), [
    *[(body, edit) for body in (FIXED_WINDOW, BADGE_ROLLING, LIFETIME)
      for edit in [{"maxEarnLimit": 99}, {"maxEarnLimit": 0}, *_KEEPING_EDITS]],
    *[(CUSTOMER_ROLLING, edit) for edit in [{"maxEarnForDays": 9, "maxEarnForMonths": 0}, *_KEEPING_EDITS]],
])
def test_identity_ignores_limits_dates_and_extras(body: dict[str, object], edit: dict[str, object]) -> None:
    assert ident({**body, **edit}) == ident(body)
    assert len(ident(body)) == 12


@pytest.mark.parametrize(("body", "edit"), [
    (FIXED_WINDOW, {"durationType": "DAYS"}),
    (FIXED_WINDOW, {"refreshRate": 3}),
    (FIXED_WINDOW, {"startDate": 1706702401}),
    (FIXED_WINDOW, {"startDate": None}),
    (FIXED_WINDOW, {"startDayOfTheWeek": "SUNDAY"}),
    (FIXED_WINDOW, {"constraintType": "CUSTOMER_BADGE_FIXED_WINDOW"}),
    (BADGE_ROLLING, {"rollType": "WEEKS"}),
    (BADGE_ROLLING, {"rollValue": 8}),
    (CUSTOMER_ROLLING, {"rollForDays": 3}),
    (CUSTOMER_ROLLING, {"maxEarnForWeeks": 2, "rollForWeeks": 1}),
    (CUSTOMER_ROLLING, {"maxEarnForMonths": None, "rollForMonths": None}),
    (LIFETIME, {"constraintType": "BADGE_FIXED_VALUE"}),
])
def test_identity_follows_the_window_shape(body: dict[str, object], edit: dict[str, object]) -> None:
    assert ident({**body, **edit}) != ident(body)


@pytest.mark.parametrize(("body", "edit"), [
    (FIXED_WINDOW, {"refreshRate": 3}), (BADGE_ROLLING, {"rollValue": 8}), (LIFETIME, {"referenceId": "ref-1"}),
])
def test_identity_is_remembered_until_a_field_changes(body: dict[str, object], edit: dict[str, object]) -> None:
    constraint = Constraint.model_validate(body)
    assert constraint.identity() == constraint.identity() == ident(body)
    copied = constraint.model_copy(update=edit)  # a copy with other fields is named afresh
    assert copied.identity() == ident({**body, **edit}) != constraint.identity()
    for field, value in edit.items():
        setattr(constraint, field, value)  # so is the constraint itself, changed in place
    assert constraint.identity() == ident({**body, **edit})
    assert "_identity" not in constraint.model_dump()


def test_identity_normalises_equivalent_spellings() -> None:
    assert ident({**FIXED_WINDOW, "durationType": "WEEKLY"}) == ident(FIXED_WINDOW)
    assert ident({**FIXED_WINDOW, "startDate": "2024-01-31T12:00:00Z"}) == ident(FIXED_WINDOW)
    assert ident({**FIXED_WINDOW, "startDayOfTheWeek": " monday"}) == ident(FIXED_WINDOW)
    daily = {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "maxEarnLimit": 1}
    assert ident({**daily, "refreshRate": 1}) == ident(daily)  # absent refreshRate means 1
    # the weekday only shapes weekly windows
    assert ident({**daily, "startDayOfTheWeek": "FRIDAY"}) == ident(daily)


def test_reference_id_takes_precedence() -> None:
    assert ident({**FIXED_WINDOW, "referenceId": "cap-1"}) == "cap-1"
    assert ident({**FIXED_WINDOW, "referenceId": "cap-1", "durationType": "DAYS"}) == "cap-1"
    assert ident({**FIXED_WINDOW, "referenceId": ""}) == ident(FIXED_WINDOW)  # empty: the digest


def test_no_limit_constraints_have_an_identity_too() -> None:
    assert ident({"constraintType": "BADGE_NO_LIMIT"}) != ident({"constraintType": "CUSTOMER_BADGE_NO_LIMIT"})


_limits = st.one_of(st.none(), st.integers(min_value=0, max_value=10_000))
_dates = st.one_of(st.none(), st.integers(min_value=0, max_value=4_000_000_000))


@given(limit=st.integers(min_value=0, max_value=10_000), end=_dates, status=st.one_of(st.none(), st.text()),
       extra=st.dictionaries(st.sampled_from(["badgeName", "notes", "x"]), st.integers()))
def test_identity_property_limits_and_end_dates_never_matter(limit: int, end: int | None, status: str | None,
                                                             extra: dict[str, int]) -> None:
    for body in (FIXED_WINDOW, BADGE_ROLLING, LIFETIME):
        edited = {**body, **extra, "maxEarnLimit": limit, "endDate": end, "cycleStatus": status}
        assert ident(edited) == ident(body)


@given(days=_limits, weeks=_limits, months=_limits)
def test_identity_property_customer_rolling_limits_never_matter(days: int | None, weeks: int | None,
                                                                months: int | None) -> None:
    body: dict[str, object] = {"constraintType": "CUSTOMER_BADGE_ROLLING_WINDOW", "rollForDays": 2,
                               "rollForWeeks": 1, "rollForMonths": 1,
                               "maxEarnForDays": 1, "maxEarnForWeeks": 1, "maxEarnForMonths": 1}
    edited = {**body, "maxEarnForDays": days if days is not None else 0, "maxEarnForWeeks": weeks or 0,
              "maxEarnForMonths": months or 0}
    assert ident(edited) == ident(body)


@given(rate=st.integers(min_value=1, max_value=50), other=st.integers(min_value=1, max_value=50),
       unit=st.sampled_from(["DAYS", "WEEKS", "MONTHS"]))
def test_identity_property_refresh_rate_is_shape(rate: int, other: int, unit: str) -> None:
    a = {"constraintType": "CUSTOMER_BADGE_FIXED_WINDOW", "durationType": unit, "refreshRate": rate,
         "maxEarnLimit": 1}
    assert (ident(a) == ident({**a, "refreshRate": other})) == (rate == other)


def test_a_copy_with_another_window_shape_gets_its_own_identity_despite_the_cache() -> None:
    fixed = Constraint.model_validate({"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS",
                                       "refreshRate": 1, "maxEarnLimit": 3})
    first = fixed.identity()
    assert fixed.identity() == first  # cached
    assert fixed.model_copy(update={"maxEarnLimit": 9}).identity() == first  # a limit keeps its counters
    assert fixed.model_copy(update={"refreshRate": 2}).identity() != first  # another window shape does not
