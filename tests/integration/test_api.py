"""The read API (CONTRACT.md section 6) over what the worker really stored: commands go
through the worker's Processor on the real Redis and MongoDB, then HTTP asks."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from badge_worker.adapters.mongo import Repositories
from badge_worker.adapters.redis_store import RedisStore
from badge_worker.adapters.request_cache import RequestCache
from badge_worker.api.app import create_app
from badge_worker.api.customers import CustomerRegistry
from badge_worker.api.keys import ApiKeys
from badge_worker.domain.commands import Stream
from badge_worker.domain.models import BadgeDefinition
from badge_worker.service.messages import InputRecord, Result
from badge_worker.service.processor import Processor
from badge_worker.settings import Settings
from tests.integration.helpers import DAY, ORG, live_badge, load
from tests.integration.shapes import Shapes, indexes_of, served
from tests.seeds import vendor_examples

OTHER_ORG = 200999
NOW = time.time()


@dataclass
class Api:
    http: httpx.AsyncClient
    key: str
    other_key: str
    keys: ApiKeys
    processor: Processor
    repos: Repositories
    customers: CustomerRegistry
    shapes: Shapes
    offset: int = 0

    async def get(self, path: str, key: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        headers["Authorization"] = f"Bearer {key or self.key}"
        return await self.http.get(path, headers=headers, **kwargs)

    async def send(self, *bodies: dict[str, Any], at: float | None = None) -> list[Result]:
        """Commands through the worker's processor, as if read at `at` (the message time)."""
        records = []
        for body in bodies:
            records.append(InputRecord("t.earns", 0, self.offset, None, json.dumps(body).encode(), (),
                                       int((at or time.time()) * 1000), Stream.EARNS))
            self.offset += 1
        return await self.processor.process_batch(records)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with app.router.lifespan_context(app):
        yield


@pytest.fixture
async def api(settings: Settings, mongo: Repositories, redis_client: Redis) -> AsyncIterator[Api]:
    shapes = Shapes()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri, event_listeners=[shapes])
    settings = settings.model_copy(update={"api_key_cache_ttl_s": 0.0, "badge_cache_ttl_s": 0.0})
    app = create_app(settings, client=client)
    db = client[settings.mongodb_database]
    keys = ApiKeys(db, cache_ttl=0)
    _, key = await keys.create(ORG, "tests")
    _, other = await keys.create(OTHER_ORG, "other org")
    processor = Processor(mongo, RedisStore(redis_client, settings.redis_key_prefix),
                          RequestCache(redis_client, settings.redis_key_prefix), badge_cache_ttl=0.0)
    try:
        async with lifespan(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                                    base_url="http://api") as http:
            yield Api(http, key, other, keys, processor, mongo, CustomerRegistry(db), shapes)
    finally:
        await client.close()


def earn(request_id: str, badge: str, customer: int, event: float | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"orgId": ORG, "requestId": request_id, "badgeMetaId": badge, "customerId": customer}
    if event is not None:
        body["earnEventDate"] = event
    return {**body, **extra}


def badge_at(badge_id: str, **extra: Any) -> BadgeDefinition:
    return live_badge(badge_id, **extra)


def seed_badge_example() -> dict[str, Any]:
    """The seed's "Get badge by ID" example with statistics (the first page example)."""
    return next(o["data"] for o in vendor_examples()["get-badge-by-id"]
                if isinstance(o, dict) and isinstance(o.get("data"), dict) and "issuedCount" in o["data"])


def seed_customer_badge() -> dict[str, Any]:
    page = vendor_examples()["get-badges-for-customer"]
    return next(b for o in page for b in o["data"]["badges"] if "benefits" in b and "tags" in b)


def same_shape(ours: Any, seed: Any, where: str = "data") -> list[str]:
    """Where `ours` lacks a key of `seed`, or has another JSON type (a null seed value matches
    any; lists compare their first objects)."""
    problems: list[str] = []
    if isinstance(seed, dict):
        if not isinstance(ours, dict):
            return [f"{where}: not an object"]
        for key, value in seed.items():
            if key not in ours:
                problems.append(f"{where}.{key}: missing")
            else:
                problems += same_shape(ours[key], value, f"{where}.{key}")
    elif isinstance(seed, list):
        if not isinstance(ours, list):
            return [f"{where}: not a list"]
        if seed and ours and isinstance(seed[0], dict):
            problems += same_shape(ours[0], seed[0], f"{where}[0]")
    elif seed is not None and ours is None:
        problems.append(f"{where}: null instead of {type(seed).__name__}")
    elif seed is not None:
        number = (int, float)
        if not (isinstance(seed, number) and isinstance(ours, number)) and type(seed) is not type(ours):
            problems.append(f"{where}: {type(ours).__name__} instead of {type(seed).__name__}")
    return problems


# ---------------------------------------------------------------- auth and service endpoints
async def test_a_key_is_required_and_names_the_org(api: Api) -> None:
    await load(api.repos, badge_at("auth-b"))
    assert (await api.http.get("/v1/badges/badgeMeta/auth-b")).status_code == 401
    for bad in ("Bearer nonsense", "Bearer bwk_abc_def", f"Basic {api.key}", "Bearer " + api.key[:-1] + "x"):
        response = await api.http.get("/v1/badges/badgeMeta/auth-b", headers={"Authorization": bad})
        assert response.status_code == 401, bad
        assert response.json()["errors"][0]["code"] == 401
    assert (await api.get("/v1/badges/badgeMeta/auth-b")).status_code == 200
    key, token = await api.keys.create(ORG, "to revoke")
    assert (await api.get("/v1/badges/badgeMeta/auth-b", key=token)).status_code == 200
    await api.keys.revoke(key.key_id)
    assert (await api.get("/v1/badges/badgeMeta/auth-b", key=token)).status_code == 401
    listed = await api.keys.list(ORG)
    assert {k.key_id: k.active for k in listed}[key.key_id] is False
    assert all("hash" not in json.dumps(k.public()) and token not in json.dumps(k.public()) for k in listed)
    # a caching process: the secret is compared on every hit, a wrong one evicts nothing, and a
    # revoke made through it applies at once (elsewhere within the cache's TTL)
    cached = ApiKeys(api.repos.db, cache_ttl=60)
    other_key, other_token = await api.keys.create(ORG, "cached")
    assert await cached.org_of(other_token) == ORG
    assert await cached.org_of(other_token[:-2] + "zz") is None
    assert await cached.org_of(other_token) == ORG
    await api.keys.revoke(other_key.key_id)
    assert await cached.org_of(other_token) == ORG  # another process revoked it: cached for up to 60 s
    await cached.revoke(other_key.key_id)
    assert await cached.org_of(other_token) is None
    stored = await api.repos.db["api_keys"].find_one({"_id": key.key_id})
    assert stored is not None and token.split("_")[2] not in json.dumps(stored, default=str)


async def test_health_readiness_metrics_and_openapi(api: Api) -> None:
    assert (await api.http.get("/healthz")).json() == {"status": "ok"}
    assert (await api.http.get("/readyz")).status_code == 200
    await api.get("/v1/badges/badgeMeta/nope")
    metrics = (await api.http.get("/metrics")).text
    assert 'badge_api_requests_total{method="GET",route="/v1/badges/badgeMeta/{badgeMetaId}",status="404"}' in metrics
    assert "badge_api_request_seconds_bucket" in metrics
    spec = (await api.http.get("/openapi.json")).json()
    assert {"/v1/badges/badgeMeta/{badgeMetaId}", "/v1/badges/customer/{customerId}",
            "/v1/badges/badgeMeta/getFixedWindowDetails"} <= set(spec["paths"])


# ---------------------------------------------------------------- badge by id
async def test_badge_by_id_has_every_seed_field_and_statistics_match_the_outcomes(api: Api) -> None:
    seed = seed_badge_example()
    body = {**seed, "startOn": NOW - 30 * DAY, "expiresOn": NOW + 30 * DAY, "active": True}
    for c in body["customerConstraints"] + body["badgeConstraints"]:
        c.update({"startDate": NOW - 30 * DAY, "endDate": NOW + 30 * DAY, "maxEarnLimit": 3})
    await load(api.repos, BadgeDefinition.model_validate(body))
    badge_id = seed["id"]
    results = await api.send(*(earn(f"s{i}", badge_id, 10 + i % 4) for i in range(14)))
    accepted = [r for r in results if r.ok]
    assert 0 < len(accepted) < 14  # the caps refused some
    response = await api.get(f"/v1/badges/badgeMeta/{badge_id}", params={"includeStatistics": "true"})
    assert response.status_code == 200
    data = response.json()["data"]
    assert same_shape(data, seed) == []
    assert data["earnedCount"] == len(accepted)
    assert data["issuedCount"] == 0
    assert data["status"] == "LIVE"
    for c in data["customerConstraints"] + data["badgeConstraints"]:
        assert c["cycleStatus"] == "ACTIVE"
        assert c["currentCycle"]["startDate"] <= time.time() < c["currentCycle"]["endDate"]
        assert c["currentCycle"]["endDate"] - c["currentCycle"]["startDate"] == 3 * DAY
    plain = (await api.get(f"/v1/badges/badgeMeta/{badge_id}")).json()["data"]
    assert "earnedCount" not in plain and "issuedCount" not in plain
    # cycles come with the statistics (CONTRACT.md section 6), never the loaded file's stale ones
    assert all("currentCycle" not in c and "cycleStatus" not in c
               for c in plain["customerConstraints"] + plain["badgeConstraints"])
    # revoked earns no longer count
    first = accepted[0].outcome["data"]
    await api.send({"type": "revokeEarn", "orgId": ORG, "requestId": "rv1", "badgeMetaId": badge_id,
                    "customerId": first["customerId"], "earnedBadgeId": first["earnedBadgeId"]})
    again = (await api.get(f"/v1/badges/badgeMeta/{badge_id}", params={"includeStatistics": "TRUE"})).json()
    assert again["data"]["earnedCount"] == len(accepted) - 1


async def test_issued_count_and_unknown_or_foreign_badges(api: Api) -> None:
    await load(api.repos, badge_at("iss-b", earnType="ISSUE_EARN", issuedBadgeExpiry={"expiryType": "NEVER"}),
               BadgeDefinition.model_validate({"id": "foreign-b", "orgId": OTHER_ORG, "startOn": NOW - DAY}))
    results = await api.send(*({"type": "issue", "orgId": ORG, "requestId": f"i{c}", "badgeMetaId": "iss-b",
                                "customerId": c} for c in range(5)))
    assert all(r.ok for r in results)
    await api.send({"type": "revokeIssue", "orgId": ORG, "requestId": "ri", "badgeMetaId": "iss-b", "customerId": 0})
    stats = (await api.get("/v1/badges/badgeMeta/iss-b", params={"includeStatistics": "true"})).json()["data"]
    assert (stats["issuedCount"], stats["earnedCount"]) == (4, 0)
    missing = await api.get("/v1/badges/badgeMeta/no-such-badge")
    foreign = await api.get("/v1/badges/badgeMeta/foreign-b")
    assert missing.status_code == foreign.status_code == 404
    assert missing.json() == foreign.json() == {"data": None, "errors": [
        {"code": 404, "message": "Passed badge is not found"}], "warnings": None}
    assert (await api.get("/v1/badges/badgeMeta/foreign-b", key=api.other_key)).status_code == 200
    bad = await api.get("/v1/badges/badgeMeta/iss-b", params={"includeStatistics": "yes"})
    assert bad.status_code == 400 and bad.json()["errors"][0]["code"] == 400
    assert "includeStatistics" in bad.json()["errors"][0]["message"]


# ---------------------------------------------------------------- customer badges
async def test_customer_views_on_sixty_badges(api: Api) -> None:
    ranked = [badge_at(f"r{i:02d}", name=f"rank {i:02d}", badgeRank=(60 - i) if i % 5 else None,
                       badgeGroupId="g1" if i % 2 else "g2") for i in range(60)]
    capped = badge_at("capped", badgeRank=1, customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 1}])
    gated = badge_at("gated", earnType="ISSUE_EARN", issuedBadgeExpiry={"expiryType": "NEVER"}, badgeRank=2)
    restricted = badge_at("restricted", ownership={"restrictedToOwners": ["Loyalty"], "claims": []})
    upcoming = badge_at("upcoming", startOn=NOW + 5 * DAY)
    short = badge_at("short", earnedBadgeExpiry={"expiryType": "RELATIVE", "relativeExpirytype": "DAYS",
                                                 "value": 1})
    await load(api.repos, *ranked, capped, gated, restricted, upcoming, short)
    customer = 4242
    # earns of 12 ranked badges on distinct days: r00 newest by message time, r11 newest by event date
    for i in range(12):
        results = await api.send(earn(f"e{i}", f"r{i:02d}", customer, event=NOW - (i + 1) * 3600 if i != 11
                                      else NOW - 60), at=NOW - i * 60)
        assert results[0].ok, results[0].outcome
    await api.send(earn("e-r00-b", "r00", customer, event=NOW - 7200), at=NOW - 3000)
    assert (await api.send(earn("cap1", "capped", customer)))[0].ok
    assert (await api.send(earn("old", "short", customer, event=NOW - 2 * DAY)))[0].ok

    async def view(**params: Any) -> list[dict[str, Any]]:
        response = await api.get(f"/v1/badges/customer/{customer}", params=params)
        assert response.status_code == 200, response.text
        return response.json()["data"]["badges"]  # type: ignore[no-any-return]

    earned = await view(badgeType="EARNED", limit=1000)
    assert {b["badgeMetaId"] for b in earned} == {f"r{i:02d}" for i in range(12)} | {"capped"}
    by_id = {b["badgeMetaId"]: b for b in earned}
    assert by_id["r00"]["earnedCount"] == 2
    assert by_id["r00"]["lastEarnedOnDate"] == int(NOW * 1000)  # its first earn (message time, whole ms)
    assert by_id["r00"]["lastEarnEventDate"] == round((NOW - 3600) * 1000)
    on_date = await view(badgeType="EARNED", sortOn="LAST_EARNED_ON_DATE", limit=1000)
    assert [b["lastEarnedOnDate"] for b in on_date] == sorted((b["lastEarnedOnDate"] for b in on_date), reverse=True)
    assert on_date[0]["badgeMetaId"] == "capped"  # earned at the wall clock, after every `at`
    on_event = await view(badgeType="EARNED", sortOn="LAST_EARNED_EVENT_DATE", limit=1000)
    assert [b["lastEarnEventDate"] for b in on_event] == sorted((b["lastEarnEventDate"] for b in on_event),
                                                                reverse=True)
    # EXPIRED and includeExpired
    assert [b["badgeMetaId"] for b in await view(badgeType="EXPIRED")] == ["short"]
    assert "short" in {b["badgeMetaId"] for b in await view(badgeType="EARNED", includeExpired="true", limit=1000)}
    # AVAILABLE: live, awardable, not capped for this customer, issued where gated
    available = {b["badgeMetaId"] for b in await view(badgeType="AVAILABLE", limit=1000)}
    assert available == {f"r{i:02d}" for i in range(60)} | {"short"}
    assert {b["badgeMetaId"] for b in await view(badgeType="AVAILABLE_TO_ISSUE")} == {"gated"}
    await api.send({"type": "issue", "orgId": ORG, "requestId": "iss", "badgeMetaId": "gated", "customerId": customer})
    assert "gated" in {b["badgeMetaId"] for b in await view(badgeType="AVAILABLE", limit=1000)}
    # both: each badge once; RANK ascending, unranked last; default limit 10
    both = await view(limit=1000)
    assert len(both) == len({b["badgeMetaId"] for b in both}) == 60 + 3  # + capped, gated, short
    ranks = [b["badgeRank"] for b in both]
    known = [r for r in ranks if r is not None]
    assert known == sorted(known) and ranks[-1] is None and ranks.index(None) == len(known)
    first_page = await api.get(f"/v1/badges/customer/{customer}")
    assert len(first_page.json()["data"]["badges"]) == 10
    assert first_page.json()["data"]["pagination"] == {"page": 0, "size": 10, "total": 63, "totalPages": 7}
    assert {b["badgeGroupId"] for b in await view(groupId="g1", limit=1000)} == {"g1"}
    assert len(await view(Limit=3)) == 3  # the seed spells it Limit
    # a revoked earn leaves the EARNED view
    stored = await api.repos.earned.find_one({"orgId": ORG, "requestId": "cap1"})
    assert stored is not None
    await api.send({"type": "revokeEarn", "orgId": ORG, "requestId": "rv-cap", "badgeMetaId": "capped",
                    "customerId": customer, "earnedBadgeId": str(stored["_id"])})
    assert "capped" not in {b["badgeMetaId"] for b in await view(badgeType="EARNED", limit=1000)}
    assert "capped" in {b["badgeMetaId"] for b in await view(badgeType="AVAILABLE", limit=1000)}


async def test_a_customer_badge_has_every_field_of_the_seed(api: Api) -> None:
    """The seed's own badge, earned: every field of the seed's entry, with its type."""
    seed = seed_customer_badge()
    await load(api.repos, BadgeDefinition.model_validate({
        **seed, "orgId": ORG, "startOn": NOW - DAY, "expiresOn": NOW + DAY, "earnType": "EARN",
        "customerConstraints": [], "badgeConstraints": [],
        "earnedBadgeExpiry": {"expiryType": "ABSOLUTE", "type": "WITH_BADGE_META"}}))
    assert (await api.send(earn("seed-e", seed["badgeMetaId"], 31)))[0].ok
    response = await api.get("/v1/badges/customer/31", params={"badgeType": "EARNED"})
    mine, = response.json()["data"]["badges"]
    assert same_shape(mine, seed) == []
    assert mine["expiresOn"] == NOW + DAY and mine["earnedCount"] == 1
    assert set(response.json()) == {"data", "errors", "warnings"}


async def test_customer_query_errors_and_identifiers(api: Api) -> None:
    await load(api.repos, badge_at("id-b"))
    await api.send(earn("x1", "id-b", 77))
    report = await api.customers.load([
        {"orgId": ORG, "customerId": 77, "email": "Tom.Sawyer@Example.com", "mobile": "919999", "cardNumber": "C-1"},
        {"orgId": OTHER_ORG, "customerId": 88, "email": "other@example.com"},
        {"orgId": ORG, "customerId": 78, "email": "tom.sawyer@example.com"},  # taken by 77
        {"orgId": ORG},
    ])
    assert report.loaded == 3 and len(report.rejected) == 2  # 78 is loaded without the email it cannot have
    again = await api.customers.load([{"orgId": ORG, "customerId": 77, "email": "tom.sawyer@example.com",
                                       "mobile": "919999", "cardNumber": "C-1"}])
    assert (again.loaded, again.unchanged) == (0, 1)

    async def ask(value: str, identifier: str | None, **params: Any) -> httpx.Response:
        headers = {"X-CAP-CUSTOMER-IDENTIFIER": identifier} if identifier else {}
        return await api.get(f"/v1/badges/customer/{value}", headers=headers, params={"badgeType": "EARNED", **params})

    for value, identifier in (("77", None), ("77", "id"), ("TOM.SAWYER@example.com", "email"), ("919999", "mobile"),
                              ("C-1", "cardNumber")):
        response = await ask(value, identifier)
        assert response.status_code == 200, (value, identifier, response.text)
        assert [b["badgeMetaId"] for b in response.json()["data"]["badges"]] == ["id-b"]
    unknown_type = await ask("77", "passport")
    assert unknown_type.status_code == 400 and unknown_type.json()["errors"][0]["code"] == 1028
    for value, identifier in (("nobody@example.com", "email"), ("other@example.com", "email"), ("X", "externalId")):
        response = await ask(value, identifier)
        assert response.status_code == 404 and response.json()["errors"][0]["code"] == 1026, (value, identifier)
    fresh = await ask("123456", None)
    assert fresh.status_code == 200 and fresh.json()["data"]["badges"] == []
    for params in ({"badgeType": "OWNED"}, {"sortOn": "NAME"}, {"limit": "0"}, {"limit": "1001"}, {"limit": "ten"},
                   {"includeExpired": "maybe"}, {"limit": "--5"}, {"limit": "9" * 5000}, {"limit": "\u0661\u0660"}):
        response = await api.get("/v1/badges/customer/77", params=params)
        assert response.status_code == 400, params
        assert response.json()["errors"][0]["code"] == 400
        assert response.json()["errors"][0]["message"].split(" ")[0] in params
    for value in ("abc", "9" * 5000, "-5", "\u0667\u0667", "99999999999999999999"):
        assert (await api.get(f"/v1/badges/customer/{value}")).status_code == 400, value
    # the other org's key sees nothing of this org's customer
    other = await api.get("/v1/badges/customer/77", key=api.other_key, params={"badgeType": "EARNED"})
    assert other.status_code == 200 and other.json()["data"]["badges"] == []
    assert (await ask("other@example.com", "email")).status_code == 404
    other_email = await api.get("/v1/badges/customer/other@example.com", key=api.other_key,
                                headers={"X-CAP-CUSTOMER-IDENTIFIER": "EMAIL"})
    assert other_email.status_code == 200


# ---------------------------------------------------------------- fixed-window details
async def test_fixed_window_details_count_each_cycle(api: Api) -> None:
    start = NOW - 10 * DAY
    await load(api.repos, badge_at("fw", startOn=start, customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_WINDOW", "referenceId": "cust-daily", "durationType": "DAYS",
         "refreshRate": 1, "maxEarnLimit": 5, "startDate": start}], badgeConstraints=[
        {"constraintType": "BADGE_FIXED_WINDOW", "referenceId": "badge-3d", "durationType": "DAYS",
         "refreshRate": 3, "maxEarnLimit": 100, "startDate": start}]))
    # customer 1: 2 earns on day 1, 1 on day 4; customer 2: 1 on day 4
    for rid, customer, day in (("a", 1, 1.5), ("b", 1, 1.6), ("c", 1, 4.2), ("d", 2, 4.3)):
        assert (await api.send(earn(rid, "fw", customer, event=start + day * DAY)))[0].ok

    async def cycles(**params: Any) -> dict[str, Any]:
        response = await api.get("/v1/badges/badgeMeta/getFixedWindowDetails", params={"badgeMetaId": "fw", **params})
        assert response.status_code == 200, response.text
        return response.json()["data"]  # type: ignore[no-any-return]

    badge_level = await cycles(constraintType="BADGE", size=100)
    counts = {round((c["startDate"] - start) / DAY): c["earnCount"] for c in badge_level["fixedWindowCycles"]}
    assert counts == {0: 2, 3: 2, 6: 0, 9: 0}
    assert {c["referenceId"] for c in badge_level["fixedWindowCycles"]} == {"badge-3d"}
    mine = await cycles(constraintType="CUSTOMER", customerId="1", size=100)
    daily = {round((c["startDate"] - start) / DAY): c["earnCount"] for c in mine["fixedWindowCycles"]}
    assert daily[1] == 2 and daily[4] == 1 and sum(daily.values()) == 3 and len(daily) == 11
    assert all(c["maxEarnLimit"] == 5 for c in mine["fixedWindowCycles"])
    # paged without walking them: ~727,000 daily and ~242,000 three-day cycles up to year 3999
    far = datetime(3999, 12, 31, tzinfo=UTC).timestamp()
    wide = await cycles(startDate="1900-01-01", endDate="3999-12-31", size=2)
    assert wide["pagination"]["total"] == int((far - start) // DAY) + 1 + int((far - start) // (3 * DAY)) + 1
    assert [c["endDate"] > far for c in wide["fixedWindowCycles"]] == [True, False]
    page = await cycles(size=5, page=1)
    assert page["pagination"] == {"page": 1, "size": 5, "total": 15, "totalPages": 3}
    newest = (await cycles(size=1))["fixedWindowCycles"][0]
    assert newest["startDate"] <= NOW < newest["endDate"]
    ranged = await cycles(constraintType="BADGE", startDate=str(start + 3 * DAY), endDate=str(start + 5 * DAY))
    assert [c["earnCount"] for c in ranged["fixedWindowCycles"]] == [2]
    for params in ({"badgeMetaId": ""}, {"constraintType": "SOME"}, {"size": "0"}, {"page": "-1"},
                   {"startDate": "yesterday"}, {"startDate": str(NOW), "endDate": str(NOW - DAY)}):
        response = await api.get("/v1/badges/badgeMeta/getFixedWindowDetails", params={"badgeMetaId": "fw", **params})
        assert response.status_code == 400, params
    missing = await api.get("/v1/badges/badgeMeta/getFixedWindowDetails", params={"badgeMetaId": "zz"})
    assert missing.status_code == 404
    foreign = await api.get("/v1/badges/badgeMeta/getFixedWindowDetails", key=api.other_key,
                            params={"badgeMetaId": "fw"})
    assert foreign.status_code == 404 and foreign.json() == missing.json()
    for params in ({"startDate": "0001-01-01"}, {"endDate": "9999-12-31"}, {"page": "--1"}, {"size": "9" * 5000}):
        response = await api.get("/v1/badges/badgeMeta/getFixedWindowDetails", params={"badgeMetaId": "fw", **params})
        assert response.status_code == 400, params


# ---------------------------------------------------------------- query shapes
async def test_every_query_the_api_issues_is_served_by_an_index(api: Api) -> None:
    await load(api.repos, badge_at("q-b", customerConstraints=[
        {"constraintType": "CUSTOMER_BADGE_FIXED_WINDOW", "durationType": "DAYS", "refreshRate": 1,
         "maxEarnLimit": 5}]), badge_at("q-i", earnType="ISSUE_EARN"))
    await api.send(earn("q1", "q-b", 5), {"type": "issue", "orgId": ORG, "requestId": "q2", "badgeMetaId": "q-i",
                                          "customerId": 5})
    await api.customers.load([{"orgId": ORG, "customerId": 5, "email": "q@example.com"}])
    api.shapes.seen.clear()
    for path, params, headers in (
            ("/v1/badges/badgeMeta/q-b", {"includeStatistics": "true"}, {}),
            ("/v1/badges/customer/5", {}, {}),
            ("/v1/badges/customer/5", {"groupId": "g"}, {}),
            ("/v1/badges/customer/q@example.com", {}, {"X-CAP-CUSTOMER-IDENTIFIER": "email"}),
            ("/v1/badges/badgeMeta/getFixedWindowDetails", {"badgeMetaId": "q-b", "customerId": "5"}, {}),
            ("/v1/badges/badgeMeta/getFixedWindowDetails", {"badgeMetaId": "q-b"}, {})):
        assert (await api.get(path, params=params, headers=headers)).status_code == 200, path
    indexes = await indexes_of(api.repos)
    collections = {c for _, c, _, _ in api.shapes.seen}
    assert {"badges", "earned_badges", "issues", "api_keys", "customer_identifiers"} <= collections, collections
    unserved = sorted({s for s in api.shapes.seen if not served(s[2], s[3], indexes.get(s[1], []))})
    assert unserved == [], f"queries without an index: {unserved}; indexes: {indexes}"
