"""The read API (CONTRACT.md section 6) on FastAPI: the seeds' GET endpoints over what the
worker stored, per-org keys, JSON request logs and Prometheus metrics.

Every body is the seeds' envelope `{"data", "errors", "warnings"}`, errors included: a bad
query value is a 400 with a message, never a 422 or a 500.
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures at runtime

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import structlog
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pymongo import AsyncMongoClient
from starlette.exceptions import HTTPException as StarletteHTTPException

from badge_worker.adapters.mongo import Repositories
from badge_worker.adapters.mongo_read import ReadRepository
from badge_worker.api import views
from badge_worker.api.customers import IDENTIFIER_TYPES, CustomerRegistry
from badge_worker.api.keys import ApiKeys, parse_token
from badge_worker.domain.models import BadgeDefinition
from badge_worker.domain.readmodel import (
    BadgeType,
    ConstraintLevel,
    SortOn,
    customer_view,
    cycle_ranges,
    cycles_page,
    sort_view,
)
from badge_worker.domain.timeutil import parse_instant
from badge_worker.errors import is_infra_error
from badge_worker.settings import Settings

log = structlog.get_logger("badge_worker.api")
Doc = dict[str, Any]
MAX_LIMIT = 1000


class ApiError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def envelope(data: Any, errors: list[Doc] | None = None) -> Doc:
    return {"data": data, "errors": errors, "warnings": None}


def error_response(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse(envelope(None, [{"code": code, "message": message}]), status_code=status)


def bad_value(message: str) -> ApiError:
    return ApiError(400, 400, message)


# ---- query values, parsed here so that every bad one gets a clear 400 in the envelope
def as_bool(name: str, value: str | None, default: bool = False) -> bool:
    if value is None:
        return default
    text = value.strip().lower()
    if text not in ("true", "false"):
        raise bad_value(f"{name} must be true or false")
    return text == "true"


_INTEGER = re.compile(r"-?[0-9]{1,19}")  # ASCII digits, within 64 bits: int() takes '١٢' and 5,000 digits badly
_CUSTOMER_ID = re.compile(r"[0-9]{1,19}")


def as_int(name: str, value: str | None, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    text = value.strip()
    if not _INTEGER.fullmatch(text):
        raise bad_value(f"{name} must be an integer")
    number = int(text)
    if not low <= number <= high:
        raise bad_value(f"{name} must be between {low} and {high}")
    return number


def as_enum(name: str, value: str | None, kind: Any) -> Any:
    if value is None:
        return None
    try:
        return kind(value.strip().upper())
    except ValueError:
        raise bad_value(f"{name} must be one of {', '.join(k.value for k in kind)}") from None


EARLIEST, LATEST = -2_208_988_800.0, 64_060_588_800.0  # 1900-01-01 .. 4000-01-01: cycles stay within dates


def as_instant(name: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        instant = parse_instant(value)
    except ValueError:
        raise bad_value(f"{name} must be an ISO-8601 date or epoch seconds") from None
    if not EARLIEST <= instant <= LATEST:
        raise bad_value(f"{name} must be between 1900-01-01 and 4000-01-01")
    return instant


@dataclass
class State:
    settings: Settings
    reads: ReadRepository
    keys: ApiKeys
    customers: CustomerRegistry
    clock: Callable[[], float]
    badge_cache: dict[tuple[int, str | None], tuple[float, list[BadgeDefinition]]]

    async def org_badges(self, org: int, group: str | None) -> list[BadgeDefinition]:
        """The org's definitions for a couple of seconds: every customer view needs them all."""
        key = (org, group)
        hit = self.badge_cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        found = await self.reads.badges(org, group)
        if len(self.badge_cache) > 10_000:
            self.badge_cache.clear()
        self.badge_cache[key] = (time.monotonic() + self.settings.badge_cache_ttl_s, found)
        return found


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("badge_api_requests_total", "HTTP requests", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("badge_api_request_seconds", "HTTP request latency", ["route", "status"],
                                 registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def create_app(settings: Settings, *, client: AsyncMongoClient[Doc] | None = None,
               clock: Callable[[], float] = time.time) -> FastAPI:
    """The API over `settings.mongodb_uri` (or a given client, kept open by its owner)."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = client is None
        mongo: AsyncMongoClient[Doc] = client if client is not None else AsyncMongoClient(
            settings.mongodb_uri, socketTimeoutMS=settings.mongodb_socket_timeout_ms)
        db = mongo[settings.mongodb_database]
        repos = Repositories(db)
        keys = ApiKeys(db, settings.api_key_cache_ttl_s)
        app.state.api = State(settings, ReadRepository(repos), keys, CustomerRegistry(db), clock, {})
        try:
            await repos.ensure_indexes()
            await keys.ensure_indexes()
        except Exception as exc:  # not ready yet: /readyz says so, requests get 503s meanwhile
            log.warning("api_indexes_not_created", error=type(exc).__name__, reason=str(exc)[:300])
        log.info("api_started", database=settings.mongodb_database)
        try:
            yield
        finally:
            log.info("api_stopping")
            if own:
                await mongo.close()

    app = FastAPI(title="badge-worker read API", version="1", lifespan=lifespan,
                  description="The vendor's Badges GET endpoints over the worker's MongoDB (CONTRACT.md section 6).")

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "header"))
        return error_response(400, 400, f"{where}: {first.get('msg', 'invalid value')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, exc.status_code, str(exc.detail))

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        except Exception as exc:
            # MongoDB away: a retryable 503; anything else a 500, logged, never a stack to the client
            status = 503 if is_infra_error(exc) else 500
            log.error("api_request_failed", error=type(exc).__name__, reason=str(exc)[:300], path=request.url.path)
            return error_response(status, status, "the store is unavailable, retry later" if status == 503
                                  else "internal error")
        finally:
            route = request.scope.get("route")
            name = getattr(route, "path", "unmatched")
            elapsed = time.perf_counter() - started
            metrics.requests.labels(name, request.method, str(status)).inc()
            metrics.latency.labels(name, str(status)).observe(elapsed)
            if name not in ("/healthz", "/readyz", "/metrics"):
                log.info("api_request", method=request.method, route=name, status=status,
                         ms=round(elapsed * 1000, 2), orgId=getattr(request.state, "org", None),
                         keyId=getattr(request.state, "key_id", None))

    def state(request: Request) -> State:
        return request.app.state.api  # type: ignore[no-any-return]

    async def org_of(request: Request, authorization: Annotated[str | None, Header()] = None) -> int:
        """The key's org: the tenant of every request (no request names an orgId)."""
        token = authorization[7:] if authorization and authorization[:7].lower() == "bearer " else None
        org = await state(request).keys.org_of(token) if token else None
        if org is None:
            raise ApiError(401, 401, "a valid API key is required: Authorization: Bearer <key>")
        parsed = parse_token(token or "")
        request.state.org = org
        request.state.key_id = parsed[0] if parsed else None
        return org

    Org = Annotated[int, Depends(org_of)]

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Doc:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        try:
            ready = await asyncio.wait_for(state(request).reads.ping(), 5)
        except Exception:
            ready = False
        return JSONResponse({"status": "ready" if ready else "MongoDB unreachable"}, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/badges/badgeMeta/getFixedWindowDetails", summary="Fixed-window cycles with their earn counts")
    async def fixed_window_details(request: Request, org: Org, badgeMetaId: str | None = None,
                                   constraintType: str | None = None, customerId: str | None = None,
                                   startDate: str | None = None, endDate: str | None = None,
                                   page: str | None = None, size: str | None = None) -> Doc:
        if not badgeMetaId:
            raise bad_value("badgeMetaId is required")
        level = as_enum("constraintType", constraintType, ConstraintLevel) or ConstraintLevel.ALL
        customer = as_int("customerId", customerId, 0, 0, 2**63 - 1) if customerId is not None else None
        page_no = as_int("page", page, 0, 0, 10**6)
        page_size = as_int("size", size, 10, 1, 100)
        now = state(request).clock()
        start, end = as_instant("startDate", startDate), as_instant("endDate", endDate)
        end = now if end is None else end
        if start is not None and start > end:
            raise bad_value("startDate must not be after endDate")
        api = state(request)
        badge = await api.reads.badge(org, badgeMetaId)
        if badge is None:
            raise ApiError(404, 404, "Passed badge is not found")
        try:
            ranges = cycle_ranges(badge, level, start, end)
            shown = cycles_page(ranges, page_no, page_size)
        except (ValueError, OverflowError):  # a cycle past what dates can hold
            raise bad_value("the cycles of that range cannot be computed: narrow startDate/endDate") from None
        total = sum(r.count for r in ranges)
        counts = await asyncio.gather(*(api.reads.cycle_count(org, badge.id, c.start, c.end, customer)
                                        for c in shown))
        return envelope({"badgeMetaId": badge.id, "customerId": customer,
                         "fixedWindowCycles": [views.cycle_body(c, n) for c, n in zip(shown, counts, strict=True)],
                         "pagination": views.pagination(page_no, page_size, len(shown), total)})

    @app.get("/v1/badges/badgeMeta/{badgeMetaId}", summary="Get badge by ID")
    async def badge_by_id(request: Request, org: Org, badgeMetaId: str, includeStatistics: str | None = None) -> Doc:
        with_stats = as_bool("includeStatistics", includeStatistics)
        api = state(request)
        badge = await api.reads.badge(org, badgeMetaId)
        if badge is None:
            raise ApiError(404, 404, "Passed badge is not found")
        now = api.clock()
        stats = None
        if with_stats:
            issued, earned = await asyncio.gather(api.reads.active_count("issued", org, badge.id, now),
                                                  api.reads.active_count("earned", org, badge.id, now))
            stats = views.Statistics(issued, earned)
        return envelope(views.badge_body(badge, now, stats))

    @app.get("/v1/badges/customer/{customerId}", summary="Get badges for customer")
    async def customer_badges(request: Request, org: Org, customerId: str, badgeType: str | None = None,
                              sortOn: str | None = None, includeExpired: str | None = None,
                              limit: str | None = None, groupId: str | None = None,
                              Limit: Annotated[str | None, Query(include_in_schema=False)] = None,
                              x_cap_customer_identifier: Annotated[str | None, Header()] = None) -> JSONResponse:
        kind = as_enum("badgeType", badgeType, BadgeType)
        sort = as_enum("sortOn", sortOn, SortOn) or SortOn.RANK
        expired = as_bool("includeExpired", includeExpired)
        size = as_int("limit", limit if limit is not None else Limit, 10, 1, MAX_LIMIT)  # the seed spells it Limit
        api = state(request)
        customer = await resolve_customer(api, org, customerId, x_cap_customer_identifier)
        now = api.clock()
        badges, earns, issues = await asyncio.gather(api.org_badges(org, groupId),
                                                     api.reads.customer_earns(org, customer),
                                                     api.reads.customer_issues(org, customer))
        listed = sort_view(customer_view(badges, earns, issues, customer, now, kind, include_expired=expired,
                                         group_id=groupId), sort)
        shown = listed[:size]
        return JSONResponse({"data": {"badges": [views.customer_badge(x, now) for x in shown],
                                      "pagination": views.pagination(0, size, len(shown), len(listed))},
                             "errors": [], "warnings": []})

    return app


async def resolve_customer(api: State, org: int, value: str, identifier: str | None) -> int:
    """The customerId a path value names under X-CAP-CUSTOMER-IDENTIFIER (default `id`)."""
    kind = (identifier or "id").strip()
    canonical = {k.lower(): k for k in ("id", *IDENTIFIER_TYPES)}.get(kind.lower())
    if canonical is None:
        raise ApiError(400, 1028, f"Invalid customer identifier type {kind!r}: use id, email, mobile, "
                                  "externalId or cardNumber")
    if canonical == "id":
        text = value.strip()
        if not _CUSTOMER_ID.fullmatch(text) or int(text) > 2**63 - 1:
            raise bad_value("customerId must be a positive integer (or set X-CAP-CUSTOMER-IDENTIFIER)")
        return int(text)
    customer = await api.customers.resolve(org, canonical, value)
    if customer is None:
        raise ApiError(404, 1026, f"Customer not found for {canonical} {value!r}")
    return customer
