"""Badge definitions in the shape of the vendor's "Get badge by ID" response.

Every model keeps unknown fields (extra="allow") so that a definition loaded and written
back loses nothing; the fields the rules read are typed and validated.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, PrivateAttr, model_validator

from badge_worker.domain.timeutil import TimeUnit, parse_instant


def _instant_or_none(value: object) -> float | None:
    return None if value is None else parse_instant(value)


OptionalInstant = Annotated[float | None, BeforeValidator(_instant_or_none)]
OptionalUnit = Annotated[
    TimeUnit | None,
    BeforeValidator(lambda v: TimeUnit.parse(v) if isinstance(v, str) else v),
    PlainSerializer(lambda u: None if u is None else u.value, return_type=str | None),
]


class OwnerType(StrEnum):
    """Owner modules, written in the seed's spelling; matched case-insensitively."""

    LOYALTY = "Loyalty"
    LOYALTY_PROMOTION = "Loyalty_Promotion"
    REFERRAL_CAMPAIGNS = "Referral_Campaigns"
    JOURNEYS = "Journeys"
    AUDIENCE_CAMPAIGNS = "Audience_Campaigns"
    REWARDS_CATALOG = "Rewards_Catalog"
    GOODWILL_MODULE = "Goodwill_Module"
    MILESTONES = "Milestones"
    HISTORICAL_IMPORT = "Historical_Import"

    @classmethod
    def parse(cls, value: object) -> OwnerType:
        if not isinstance(value, str):
            raise ValueError(f"ownerType must be a string, got {type(value).__name__}")
        key = value.strip().upper().replace(" ", "_").replace("-", "_")
        # The vendor's table also spells the promotion owner in the plural.
        key = {"LOYALTY_PROMOTIONS": "LOYALTY_PROMOTION"}.get(key, key)
        for member in cls:
            if member.value.upper() == key:
                return member
        raise ValueError(f"unknown ownerType {value!r}")


class EarnType(StrEnum):
    EARN = "EARN"
    ISSUE_EARN = "ISSUE_EARN"

    @classmethod
    def parse(cls, value: object) -> EarnType:
        if isinstance(value, cls):
            return value
        if not isinstance(value, str):
            raise ValueError("earnType must be a string")
        return cls(value.strip().upper().replace(" ", "_").replace("&", "").replace("__", "_"))


MAX_MONTHS_RATE = 1200  # a fixed window of 100 years


class ConstraintType(StrEnum):
    CUSTOMER_BADGE_FIXED_VALUE = "CUSTOMER_BADGE_FIXED_VALUE"
    CUSTOMER_BADGE_FIXED_WINDOW = "CUSTOMER_BADGE_FIXED_WINDOW"
    CUSTOMER_BADGE_ROLLING_WINDOW = "CUSTOMER_BADGE_ROLLING_WINDOW"
    CUSTOMER_BADGE_NO_LIMIT = "CUSTOMER_BADGE_NO_LIMIT"
    BADGE_FIXED_VALUE = "BADGE_FIXED_VALUE"
    BADGE_FIXED_WINDOW = "BADGE_FIXED_WINDOW"
    BADGE_ROLLING_WINDOW = "BADGE_ROLLING_WINDOW"
    BADGE_NO_LIMIT = "BADGE_NO_LIMIT"

    @property
    def is_customer(self) -> bool:
        return self.value.startswith("CUSTOMER_")


class _Open(BaseModel):
    """Base: unknown fields are kept and written back."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Claim(_Open):
    ownerType: str
    referenceId: str
    isActive: bool = True

    @model_validator(mode="before")
    @classmethod
    def _coerce(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("referenceId"), int | float):
            data = {**data, "referenceId": str(data["referenceId"])}
        return data


class Ownership(_Open):
    restrictedToOwners: list[str] = Field(default_factory=list)
    claims: list[Claim] = Field(default_factory=list)

    def allowed_owner_types(self) -> set[OwnerType] | None:
        """None when the badge names no restriction; unknown spellings are ignored."""
        if not self.restrictedToOwners:
            return None
        allowed: set[OwnerType] = set()
        for name in self.restrictedToOwners:
            try:
                allowed.add(OwnerType.parse(name))
            except ValueError:
                continue
        return allowed

    def has_active_claim(self, owner: OwnerType, reference_id: str) -> bool:
        for claim in self.claims:
            try:
                same_owner = OwnerType.parse(claim.ownerType) is owner
            except ValueError:
                same_owner = False
            if same_owner and claim.referenceId == reference_id and claim.isActive:
                return True
        return False


class ExpiryType(StrEnum):
    RELATIVE = "RELATIVE"
    ABSOLUTE = "ABSOLUTE"
    NEVER = "NEVER"


class Expiry(_Open):
    expiryType: ExpiryType
    relativeExpirytype: OptionalUnit = None
    value: int | None = None
    type: str | None = None  # FIXED_DATE or WITH_BADGE_META
    expiresOn: OptionalInstant = None
    expireWithBadgeMeta: bool | None = None

    @model_validator(mode="after")
    def _complete(self) -> Expiry:
        if self.expiryType is ExpiryType.RELATIVE:
            if self.relativeExpirytype is None or self.value is None or self.value < 0:
                raise ValueError("RELATIVE expiry needs relativeExpirytype and a value >= 0")
        if self.expiryType is ExpiryType.ABSOLUTE:
            with_meta = bool(self.expireWithBadgeMeta) or (self.type or "").upper() == "WITH_BADGE_META"
            if not with_meta and self.expiresOn is None:
                raise ValueError("ABSOLUTE FIXED_DATE expiry needs expiresOn")
        return self


_DIGESTS: dict[tuple[tuple[str, type, Any], ...], str] = {}


class Constraint(_Open):
    constraintType: ConstraintType
    referenceId: str | None = None
    maxEarnLimit: int | None = None
    # fixed windows
    durationType: OptionalUnit = None
    refreshRate: int | None = None
    startDate: OptionalInstant = None
    endDate: OptionalInstant = None
    startDayOfTheWeek: str | None = None
    # BADGE_ROLLING_WINDOW
    rollType: OptionalUnit = None
    rollValue: int | None = None
    # CUSTOMER_BADGE_ROLLING_WINDOW
    maxEarnForDays: int | None = None
    rollForDays: int | None = None
    maxEarnForWeeks: int | None = None
    rollForWeeks: int | None = None
    maxEarnForMonths: int | None = None
    rollForMonths: int | None = None
    # identity(), once per instance: every earn asks (rebuilding the window shape to look up
    # its digest was ~4% of the worker's CPU); any field set afterwards forgets it
    _identity: str | None = PrivateAttr(default=None)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_"):
            self._identity = None
        super().__setattr__(name, value)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        copied._identity = None
        return copied

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        # The vendor's table calls durationType "duration" (DAILY/WEEKLY/MONTHLY).
        if isinstance(data, dict) and data.get("durationType") is None and "duration" in data:
            data = {**data, "durationType": data["duration"]}
        return data

    @model_validator(mode="after")
    def _complete(self) -> Constraint:
        kind = self.constraintType.value
        if kind.endswith("_NO_LIMIT"):
            return self
        if kind.endswith("_FIXED_VALUE") or kind.endswith("_FIXED_WINDOW") or kind == "BADGE_ROLLING_WINDOW":
            if self.maxEarnLimit is None or self.maxEarnLimit < 0:
                raise ValueError(f"{kind} needs maxEarnLimit >= 0")
        if kind.endswith("_FIXED_WINDOW"):
            if self.durationType is None:
                raise ValueError(f"{kind} needs durationType")
            if self.refreshRate is not None and self.refreshRate < 1:
                raise ValueError("refreshRate must be >= 1")
            if self.durationType is TimeUnit.MONTHS and (self.refreshRate or 1) > MAX_MONTHS_RATE:
                # a longer cycle ends past year 9999, which no date can hold
                raise ValueError(f"refreshRate of a MONTHS window must be <= {MAX_MONTHS_RATE}")
        if kind == "BADGE_ROLLING_WINDOW" and (self.rollType is None or not self.rollValue or self.rollValue < 1):
            raise ValueError("BADGE_ROLLING_WINDOW needs rollType and rollValue >= 1")
        if kind == "CUSTOMER_BADGE_ROLLING_WINDOW":
            for unit in ("Days", "Weeks", "Months"):
                limit, roll = getattr(self, f"maxEarnFor{unit}"), getattr(self, f"rollFor{unit}")
                if (limit is None) != (roll is None):
                    raise ValueError(f"maxEarnFor{unit} and rollFor{unit} go together")
                if roll is not None and (roll < 1 or limit < 0):
                    raise ValueError(f"rollFor{unit} must be >= 1 and maxEarnFor{unit} >= 0")
        return self

    def window_shape(self) -> dict[str, Any]:
        """What decides which earns this constraint counts together (see `identity`).

        - every type: `constraintType` (it also carries the scope, customer or badge);
        - `*_FIXED_WINDOW`: `durationType`, `refreshRate` (absent = 1), `startDate` (in
          milliseconds) and, for weekly windows only, `startDayOfTheWeek` (upper case);
        - `BADGE_ROLLING_WINDOW`: `rollType`, `rollValue`;
        - `CUSTOMER_BADGE_ROLLING_WINDOW`: `rollForDays`, `rollForWeeks`, `rollForMonths` (the
          roll lengths; `maxEarnFor*` are the limits over them and are left out);
        - `*_FIXED_VALUE` / `*_NO_LIMIT`: nothing more.

        Never the limits (`maxEarnLimit`, `maxEarnFor*`), `endDate`, `cycleStatus`,
        `currentCycle`, `referenceId` or unknown extra fields.
        """
        kind = self.constraintType.value
        shape: dict[str, Any] = {"constraintType": kind}
        if kind.endswith("_FIXED_WINDOW"):
            weekly = self.durationType is TimeUnit.WEEKS
            shape.update(
                durationType=None if self.durationType is None else self.durationType.value,
                refreshRate=self.refreshRate or 1,
                startDate=None if self.startDate is None else round(self.startDate * 1000),
                startDayOfTheWeek=((self.startDayOfTheWeek or "").strip().upper() or None) if weekly else None,
            )
        elif kind == "BADGE_ROLLING_WINDOW":
            shape.update(rollType=None if self.rollType is None else self.rollType.value, rollValue=self.rollValue)
        elif kind == "CUSTOMER_BADGE_ROLLING_WINDOW":
            shape.update(rollForDays=self.rollForDays, rollForWeeks=self.rollForWeeks,
                         rollForMonths=self.rollForMonths)
        return shape

    def identity(self) -> str:
        """The stable name of this constraint's counters (windows.limit_checks builds counter
        names from it, so it decides which stored counts a definition keeps using).

        Rule: the constraint's `referenceId` when it has one; otherwise the first 12 hex digits
        of a SHA-1 of its window shape (`window_shape`: the constraint type and the shape of its
        windows, nothing else). So editing a limit (`maxEarnLimit`, `maxEarnFor*`), `endDate`,
        `cycleStatus`, `currentCycle`, a name or any unknown field keeps the counts; changing
        the type or the window shape (or the referenceId) starts new counts.

        Two constraints of one badge with the same shape (and no referenceId) get the same
        identity and so share their counters: they count the same earns, each with its own
        limit. Whoever takes counts must take a shared counter once per earn, not once per
        constraint (see docs/counters.md).
        """
        memo = self.__pydantic_private__  # read directly: `self._identity` costs more than the digest lookup
        if memo is None:  # pragma: no cover - pydantic sets it for a model with private attributes
            return self._compute_identity()
        known: str | None = memo.get("_identity")
        if known is None:
            known = memo["_identity"] = self._compute_identity()
        return known

    def _compute_identity(self) -> str:
        if self.referenceId:
            return self.referenceId
        shape = self.window_shape()
        # every earn asks: the digest of each shape once (the type is in the key: 1, 1.0 and
        # True are equal keys but not the same JSON)
        key = tuple((k, v.__class__, v) for k, v in shape.items())
        digest = _DIGESTS.get(key)
        if digest is None:
            digest = hashlib.sha1(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]
            if len(_DIGESTS) > 10_000:
                _DIGESTS.clear()
            _DIGESTS[key] = digest
        return digest


class BadgeDefinition(_Open):
    id: str
    orgId: int
    name: str | None = None
    description: str | None = None
    startOn: OptionalInstant = None
    expiresOn: OptionalInstant = None
    earnedBadgeExpiry: Expiry | None = None
    issuedBadgeExpiry: Expiry | None = None
    ownership: Ownership = Field(default_factory=Ownership)
    customerConstraints: list[Constraint] = Field(default_factory=list)
    badgeConstraints: list[Constraint] = Field(default_factory=list)
    earnType: Annotated[EarnType, BeforeValidator(EarnType.parse)] = EarnType.EARN
    status: str | None = None
    active: bool = True
    badgeGroupId: str | None = None
    badgeRank: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        # The customer-badges API names the id badgeMetaId; both shapes are accepted.
        if "id" not in data and "badgeMetaId" in data:
            data["id"] = data.pop("badgeMetaId")
        for key in ("customerConstraints", "badgeConstraints"):
            if data.get(key) is None and key in data:
                data[key] = []
        if data.get("ownership") is None and "ownership" in data:
            data["ownership"] = {}
        if data.get("active") is None and "active" in data:
            data["active"] = True
        return data

    @classmethod
    def from_payload(cls, payload: Any) -> list[BadgeDefinition]:
        """Accepts `{"data": {...}}`, a bare definition, `{"data": {"badges": [...]}}`, or a list."""
        if isinstance(payload, list):
            return [badge for item in payload for badge in cls.from_payload(item)]
        if not isinstance(payload, dict):
            raise ValueError("a badge definition must be a JSON object or a list of them")
        if "data" in payload and isinstance(payload["data"], dict | list):
            inner = payload["data"]
            if isinstance(inner, dict) and isinstance(inner.get("badges"), list):
                return cls.from_payload(inner["badges"])
            return cls.from_payload(inner)
        return [cls.model_validate(payload)]

    def to_document(self) -> dict[str, Any]:
        """The definition as stored and returned: every field, dates as epoch seconds."""
        return self.model_dump(mode="json", by_alias=True)
