"""MongoDB reads of the read API (CONTRACT.md section 6): one query shape per need, each
served by an index `Repositories.ensure_indexes` creates (tests/integration/test_api_queries.py
records them). Counts are index counts on MongoDB; FerretDB v1 scans for every one of them
(README: what the local store costs at scale).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from pydantic import ValidationError

from badge_worker.adapters.mongo import Repositories, definition
from badge_worker.domain.models import BadgeDefinition
from badge_worker.domain.readmodel import Earn
from badge_worker.domain.rules import EarnStatus, IssueRecord

log = structlog.get_logger("badge_worker.api")
Doc = dict[str, Any]
_EARN_FIELDS = {"_id": 0, "badgeMetaId": 1, "eventDate": 1, "earnedOn": 1, "expiresOn": 1, "status": 1}
_ISSUE_FIELDS = {"_id": 1, "badgeMetaId": 1, "issuedOn": 1, "expiresOn": 1, "status": 1}


class ReadRepository:
    def __init__(self, repos: Repositories) -> None:
        self.repos = repos

    async def badge(self, org: int, badge_id: str) -> BadgeDefinition | None:
        return await self.repos.get_badge(org, badge_id)

    async def badges(self, org: int, group_id: str | None = None) -> list[BadgeDefinition]:
        """Every definition of the org (of one group), with its claims."""
        query: Doc = {"orgId": org} if group_id is None else {"orgId": org, "badgeGroupId": group_id}
        docs, claims = await asyncio.gather(
            self.repos.badges.find(query).to_list(),
            self.repos.claims.find({"orgId": org}).to_list())
        by_badge: dict[str, list[Doc]] = {}
        # in claim order, sorted here: the index (orgId, badgeMetaId, order) cannot sort by order
        # across the badges of an org
        for claim in sorted(claims, key=lambda c: str(c.get("order", ""))):
            by_badge.setdefault(str(claim.get("badgeMetaId")), []).append(claim)
        found = []
        for doc in docs:
            try:
                found.append(definition(doc, by_badge.get(str(doc.get("id")), [])))
            except (ValidationError, KeyError) as exc:  # one bad definition must not break the org's views
                log.warning("badge_definition_unreadable", orgId=org, badgeMetaId=str(doc.get("id")),
                            reason=str(exc)[:300])
        return found

    async def customer_earns(self, org: int, customer: int) -> list[Earn]:
        """The customer's earned badges that still count (not revoked). By (orgId, customerId)
        only, the status checked here: the index's leading fields, and a customer's history is small."""
        cursor = self.repos.earned.find({"orgId": org, "customerId": customer}, _EARN_FIELDS)
        found = []
        async for d in cursor:
            if d.get("status") != EarnStatus.ACTIVE:
                continue
            try:
                event = float(d["eventDate"])
                found.append(Earn(str(d["badgeMetaId"]), event, float(d.get("earnedOn") or event),
                                  _number(d.get("expiresOn"))))
            except (KeyError, TypeError, ValueError):  # not as the worker writes them: left out
                log.warning("earned_badge_unreadable", orgId=org, customerId=customer)
        return found

    async def customer_issues(self, org: int, customer: int) -> dict[str, list[IssueRecord]]:
        """The customer's issues that are not revoked, by badge id."""
        found: dict[str, list[IssueRecord]] = {}
        async for d in self.repos.issues.find({"orgId": org, "customerId": customer}, _ISSUE_FIELDS):
            if d.get("status") != "ACTIVE":
                continue
            try:
                record = IssueRecord(str(d["_id"]), float(d["issuedOn"]), _number(d.get("expiresOn")), True)
            except (KeyError, TypeError, ValueError):
                log.warning("issue_unreadable", orgId=org, customerId=customer)
                continue
            found.setdefault(str(d.get("badgeMetaId")), []).append(record)
        return found

    async def active_count(self, kind: str, org: int, badge_id: str, now: float) -> int:
        """Issues (`kind` "issued") or earned badges ("earned") of the badge that are neither
        revoked nor expired at `now`: two index counts (all not revoked, minus those expired)."""
        collection = self.repos.issues if kind == "issued" else self.repos.earned
        base: Doc = {"orgId": org, "badgeMetaId": badge_id, "status": "ACTIVE"}
        held, lapsed = await asyncio.gather(collection.count_documents(base),
                                            collection.count_documents({**base, "expiresOn": {"$lte": now}}))
        return max(0, held - lapsed)

    async def cycle_count(self, org: int, badge_id: str, start: float, end: float,
                          customer: int | None = None) -> int:
        """Earned badges (not revoked) whose event date falls in [start, end)."""
        query: Doc = {"orgId": org, "badgeMetaId": badge_id, "status": EarnStatus.ACTIVE,
                      "eventDate": {"$gte": start, "$lt": end}}
        if customer is not None:
            query["customerId"] = customer
        return await self.repos.earned.count_documents(query)

    async def ping(self) -> bool:
        return await self.repos.ping()


def _number(value: Any) -> float | None:
    return None if value is None else float(value)
