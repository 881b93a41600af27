"""The customer registry: which customerId an email, mobile, externalId or cardNumber names,
within one org (the X-CAP-CUSTOMER-IDENTIFIER header of CONTRACT.md section 6).

Two collections, both read by `_id` only: `customers` (`org:customerId` -> the identifiers
it has) and `customer_identifiers` (`org|type|value` -> customerId). The `_id` makes each
identifier unique within an org without a unique index on an optional field (MongoDB would
index every absent email as null, and FerretDB v1 has no partial indexes).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from badge_worker import constants as K

Doc = dict[str, Any]
IDENTIFIER_TYPES = ("email", "mobile", "externalId", "cardNumber")


class RegistryError(ValueError):
    """A record of a registry file that cannot be loaded."""


def normalize(kind: str, value: object) -> str:
    """The form identifiers are stored and looked up in: emails case-insensitive, others trimmed."""
    text = str(value).strip()
    return text.lower() if kind == "email" else text


def identifier_id(org: int, kind: str, value: object) -> str:
    return f"{org}|{kind}|{normalize(kind, value)}"


@dataclass(frozen=True)
class CustomerRecord:
    org: int
    customer: int
    identifiers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Any) -> CustomerRecord:
        if not isinstance(raw, dict):
            raise RegistryError("a customer must be a JSON object")
        try:
            org, customer = raw["orgId"], raw["customerId"]
        except KeyError as exc:
            raise RegistryError(f"{exc.args[0]} is missing") from None
        for name, value in (("orgId", org), ("customerId", customer)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
                raise RegistryError(f"{name} must be an integer of 0..2^63-1")
        identifiers = {}
        for kind in IDENTIFIER_TYPES:
            value = raw.get(kind)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, str | int) or not normalize(kind, value):
                raise RegistryError(f"{kind} must be a non-empty string")
            if "\x00" in str(value) or len(str(value)) > 1024:  # not storable in PostgreSQL's JSONB / too long
                raise RegistryError(f"{kind} must be at most 1,024 characters without NUL")
            identifiers[kind] = normalize(kind, value)
        return cls(org, customer, identifiers)


def read_file(text: str) -> Iterator[Any]:
    """A JSON list of customers, or JSON lines (one object per line)."""
    stripped = text.strip()
    if stripped.startswith("["):
        loaded = json.loads(stripped)
        yield from loaded
        return
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise RegistryError(f"line {number}: not JSON ({exc.msg})") from None


@dataclass
class LoadReport:
    loaded: int = 0
    unchanged: int = 0
    rejected: list[str] = field(default_factory=list)


class CustomerRegistry:
    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.customers = db[K.CUSTOMERS]
        self.identifiers = db[K.CUSTOMER_IDENTIFIERS]

    async def resolve(self, org: int, kind: str, value: str) -> int | None:
        """The customerId an identifier names in `org`, or None."""
        doc = await self.identifiers.find_one({"_id": identifier_id(org, kind, value)})
        return None if doc is None else int(doc["customerId"])

    async def load(self, raws: Iterable[Any]) -> LoadReport:
        """Upsert each customer and its identifiers (idempotent: loading a file twice changes
        nothing). An identifier another customer of the org holds is refused for this one."""
        report = LoadReport()
        for number, raw in enumerate(raws, 1):
            try:
                record = CustomerRecord.parse(raw)
            except RegistryError as exc:
                report.rejected.append(f"record {number}: {exc}")
                continue
            changed = await self._upsert(record, report, number)
            if changed:
                report.loaded += 1
            else:
                report.unchanged += 1
        return report

    async def _upsert(self, record: CustomerRecord, report: LoadReport, number: int) -> bool:
        key = f"{record.org}:{record.customer}"
        stored = await self.customers.find_one({"_id": key})
        before: dict[str, str] = dict((stored or {}).get("identifiers") or {})
        kept: dict[str, str] = {}
        for kind, value in record.identifiers.items():
            ident = identifier_id(record.org, kind, value)
            try:
                await self.identifiers.insert_one({"_id": ident, "orgId": record.org, "customerId": record.customer})
            except DuplicateKeyError:
                holder = await self.identifiers.find_one({"_id": ident})
                if holder is not None and int(holder["customerId"]) != record.customer:
                    report.rejected.append(f"record {number}: {kind} {value!r} belongs to customer "
                                           f"{holder['customerId']}")
                    continue
            kept[kind] = value
        for kind, value in before.items():  # identifiers this customer no longer has
            if kept.get(kind) != value:
                await self.identifiers.delete_one({"_id": identifier_id(record.org, kind, value),
                                                   "customerId": record.customer})
        if stored is not None and before == kept:
            return False
        await self.customers.replace_one({"_id": key}, {"_id": key, "orgId": record.org,
                                                        "customerId": record.customer, "identifiers": kept},
                                         upsert=True)
        return True
