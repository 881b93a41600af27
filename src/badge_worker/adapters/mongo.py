"""MongoDB repositories (PyMongo's AsyncMongoClient): the truth behind every effect.

No multi-document transactions (FerretDB has none): every write is idempotent per
(orgId, requestId) through unique indexes, and state moves forward by conditional updates.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, IndexModel, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from badge_worker import constants as K
from badge_worker.adapters.redis_store import HeldEarn
from badge_worker.domain.models import BadgeDefinition, Claim
from badge_worker.domain.rules import EarnedRecord, EarnStatus, IssueRecord

Doc = dict[str, Any]


def badge_key(badge_id: str) -> Any:
    """Badge `_id`: the ObjectId when the id is 24-hex (as the vendor's are), else the string."""
    return ObjectId(badge_id) if ObjectId.is_valid(badge_id) else badge_id


def as_object_id(value: str) -> ObjectId | None:
    return ObjectId(value) if ObjectId.is_valid(value) else None


@dataclass(frozen=True)
class LedgerEntry:
    origin: str
    outcome: Doc | None


class Repositories:
    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.db = db
        self.badges = db[K.BADGES]
        self.requests = db[K.REQUESTS]
        self.issues = db[K.ISSUES]
        self.earned = db[K.EARNED]

    async def ensure_indexes(self) -> None:
        org_request = IndexModel([("orgId", ASCENDING), ("requestId", ASCENDING)], unique=True, name="org_request")
        org_customer_badge = IndexModel([("orgId", ASCENDING), ("customerId", ASCENDING),
                                         ("badgeMetaId", ASCENDING)], name="org_customer_badge")
        wanted = {
            self.requests: [org_request],
            self.issues: [org_request, org_customer_badge],
            self.earned: [
                org_request, org_customer_badge,
                IndexModel([("orgId", ASCENDING), ("customerId", ASCENDING), ("badgeGroupId", ASCENDING)],
                           name="org_customer_group"),
                IndexModel([("orgId", ASCENDING), ("badgeMetaId", ASCENDING), ("status", ASCENDING)],
                           name="org_badge_status"),
            ],
            self.badges: [IndexModel([("orgId", ASCENDING), ("badgeGroupId", ASCENDING)], name="org_group")],
        }
        # One index per call: FerretDB 1.24 drops the connection (a panic) when a single
        # createIndexes names two or more indexes that already exist.
        for collection, models in wanted.items():
            for model in models:
                await collection.create_indexes([model])

    # ---- badge definitions
    async def upsert_badge(self, badge: BadgeDefinition) -> None:
        doc = badge.to_document()
        doc["_id"] = badge_key(badge.id)
        await self.badges.replace_one({"_id": doc["_id"]}, doc, upsert=True)

    async def get_badge(self, org: int, badge_id: str) -> BadgeDefinition | None:
        doc = await self.badges.find_one({"_id": badge_key(badge_id), "orgId": org})
        if doc is None:
            return None
        doc.pop("_id", None)
        doc.pop("claimsVersion", None)
        return BadgeDefinition.model_validate(doc)

    async def set_claim(self, org: int, badge_id: str, claim: Claim) -> bool:
        """Set one owner's claim (isActive true or false); compare-and-set on a version field
        so that two writers never lose each other's claims. True if the badge changed."""
        while True:
            doc = await self.badges.find_one({"_id": badge_key(badge_id), "orgId": org},
                                             {"ownership": 1, "claimsVersion": 1})
            if doc is None:
                return False
            claims: list[Doc] = list((doc.get("ownership") or {}).get("claims") or [])
            version = doc.get("claimsVersion", 0)
            changed, found = False, False
            for item in claims:
                if (str(item.get("ownerType", "")).upper() == claim.ownerType.upper()
                        and str(item.get("referenceId")) == claim.referenceId):
                    found = True
                    if bool(item.get("isActive", True)) != claim.isActive:
                        item["isActive"] = claim.isActive
                        changed = True
            if not found and claim.isActive:
                claims.append(claim.model_dump(mode="json"))
                changed = True
            if not changed:
                return False
            result = await self.badges.update_one(
                {"_id": doc["_id"], "claimsVersion": version} if "claimsVersion" in doc
                else {"_id": doc["_id"], "claimsVersion": {"$exists": False}},
                {"$set": {"ownership.claims": claims, "claimsVersion": version + 1}})
            if result.modified_count == 1:
                return True

    # ---- the requestId ledger
    async def ledger_claim(self, org: int, request_id: str, origin: str, kind: str) -> LedgerEntry | None:
        """Register the command; None if new, else the entry of whoever used requestId first."""
        try:
            await self.requests.insert_one({"orgId": org, "requestId": request_id, "origin": origin,
                                            "type": kind, "outcome": None, "createdAt": time.time()})
            return None
        except DuplicateKeyError:
            doc = await self.requests.find_one({"orgId": org, "requestId": request_id})
            if doc is None:  # pragma: no cover - the duplicate vanished; nothing deletes ledger docs
                raise
            return LedgerEntry(origin=doc["origin"], outcome=doc.get("outcome"))

    async def ledger_store_outcomes(self, items: Iterable[tuple[int, str, str, Doc]]) -> None:
        """Write the first outcome of each (org, requestId, origin) in one bulk round trip."""
        ops = [UpdateOne({"orgId": org, "requestId": rid, "origin": origin, "outcome": None},
                         {"$set": {"outcome": outcome, "decidedAt": time.time()}})
               for org, rid, origin, outcome in items]
        if ops:
            await self.requests.bulk_write(ops, ordered=False)

    # ---- issues
    async def active_issues(self, org: int, customer: int, badge_id: str) -> list[IssueRecord]:
        cursor = self.issues.find({"orgId": org, "customerId": customer, "badgeMetaId": badge_id,
                                   "status": "ACTIVE"})
        return [IssueRecord(str(d["_id"]), d["issuedOn"], d.get("expiresOn"), True) async for d in cursor]

    async def insert_issue(self, org: int, request_id: str, doc: Doc) -> Doc:
        """Idempotent per requestId: the stored issue (new, or the one written before a crash)."""
        body = {"orgId": org, "requestId": request_id, "status": "ACTIVE", **doc}
        try:
            await self.issues.insert_one(body)
            return body
        except DuplicateKeyError:
            found = await self.issues.find_one({"orgId": org, "requestId": request_id})
            assert found is not None
            return found

    async def revoke_issues(self, org: int, issued_ids: Sequence[str], by_request: str) -> None:
        ids = [as_object_id(i) for i in issued_ids]
        await self.issues.update_many({"_id": {"$in": [i for i in ids if i is not None]}, "orgId": org,
                                       "status": "ACTIVE"},
                                      {"$set": {"status": "REVOKED", "revokedBy": by_request,
                                                "revokedAt": time.time()}})

    async def issues_revoked_by(self, org: int, request_id: str) -> list[str]:
        return [str(d["_id"]) async for d in self.issues.find({"orgId": org, "revokedBy": request_id}, {"_id": 1})]

    # ---- earned badges
    async def insert_earned(self, org: int, request_id: str, doc: Doc) -> Doc:
        """PENDING earned badge, idempotent per requestId: returns the stored document."""
        body = {"orgId": org, "requestId": request_id, "status": EarnStatus.PENDING, **doc}
        try:
            await self.earned.insert_one(body)
            return body
        except DuplicateKeyError:
            found = await self.earned.find_one({"orgId": org, "requestId": request_id})
            assert found is not None
            return found

    async def set_earned_status(self, earned_id: Any, status: str, **fields: Any) -> None:
        await self.earned.update_one({"_id": earned_id}, {"$set": {"status": status, **fields}})

    async def get_earned(self, org: int, earned_id: str) -> tuple[EarnedRecord, Doc] | None:
        oid = as_object_id(earned_id)
        if oid is None:
            return None
        doc = await self.earned.find_one({"_id": oid, "orgId": org})
        if doc is None:
            return None
        return EarnedRecord(str(doc["_id"]), doc["customerId"], doc["badgeMetaId"], doc["status"]), doc

    async def revoke_earned(self, earned_id: Any, by_request: str) -> None:
        await self.earned.update_one({"_id": earned_id, "status": EarnStatus.ACTIVE},
                                     {"$set": {"status": EarnStatus.REVOKED, "revokedBy": by_request,
                                               "revokedAt": time.time()}})

    async def held_earns(self, org: int, badge_id: str) -> list[HeldEarn]:
        """Every earn of the badge that counts towards its limits (ACTIVE, or PENDING)."""
        cursor = self.earned.find(
            {"orgId": org, "badgeMetaId": badge_id,
             "status": {"$in": [EarnStatus.ACTIVE, EarnStatus.PENDING]}},
            {"requestId": 1, "eventDate": 1, "limits": 1, "status": 1})
        return [HeldEarn(d["requestId"], d["eventDate"], [(x["kind"], x["counter"]) for x in d.get("limits", [])],
                         d["status"] == EarnStatus.ACTIVE) async for d in cursor]

    async def ping(self) -> bool:
        await self.db.command("ping")
        return True
