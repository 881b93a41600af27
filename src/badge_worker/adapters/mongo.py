"""MongoDB repositories (PyMongo's AsyncMongoClient): the truth behind every effect.

No multi-document transactions (FerretDB has none): every write is idempotent per
(orgId, requestId) through unique indexes. The earn path only inserts (ledger, intent, earned
badge, outcome); updates, by `_id`, are left to rejections, revokes and claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from bson import ObjectId
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure

from badge_worker import constants as K
from badge_worker.adapters import json_text, stored_outcome
from badge_worker.adapters.mongo_batch import WriteBatcher, is_transient_write_error
from badge_worker.adapters.redis_store import CounterRef, HeldEarn
from badge_worker.domain.models import BadgeDefinition, Claim
from badge_worker.domain.rules import EarnedRecord, EarnStatus, IssueRecord

log = structlog.get_logger("badge_worker.mongo")

Doc = dict[str, Any]


def badge_key(badge_id: str) -> Any:
    """Badge `_id`: the ObjectId when the id is 24-hex (as the vendor's are), else the string."""
    return ObjectId(badge_id) if ObjectId.is_valid(badge_id) else badge_id


# Fields of intents and earned badges kept as JSON text (adapters/json_text.py): only the
# worker reads them back, whole. Documents written before hold them as arrays; both are read.
PACKED_FIELDS = ("limits", "earnConstraints")


def pack(doc: Doc) -> Doc:
    return {k: json_text.dumps(v) if k in PACKED_FIELDS and not isinstance(v, str) else v for k, v in doc.items()}


def unpack(doc: Doc) -> Doc:
    for k in PACKED_FIELDS:
        if isinstance(doc.get(k), str):
            doc[k] = json_text.loads(doc[k])
    return doc


def counter_refs(doc: Doc) -> list[CounterRef]:
    return [CounterRef.from_doc(x, doc["eventDate"]) for x in unpack(doc).get("limits") or []]


def as_object_id(value: str) -> ObjectId | None:
    return ObjectId(value) if ObjectId.is_valid(value) else None


def _claim_pair(claim: Doc) -> tuple[str, str]:
    return str(claim.get("ownerType", "")).upper(), str(claim.get("referenceId"))


def merge_claims(stored: list[Doc], loaded: list[Doc]) -> list[Doc]:
    """The stored claims, then the loaded ones whose (ownerType, referenceId) is not stored
    (see `Repositories.upsert_badge`)."""
    merged = list(stored)
    seen = {_claim_pair(c) for c in stored}
    for claim in loaded:
        pair = _claim_pair(claim)
        if pair not in seen:
            seen.add(pair)
            merged.append(claim)
    return merged


class BadgeOfAnotherOrg(ValueError):
    """`badges load` of a definition whose id another org's stored badge has."""

    def __init__(self, badge_id: str) -> None:
        super().__init__(f"badge {badge_id} is stored for another org: a definition cannot move between orgs")


def definition(doc: Doc, claims: list[Doc]) -> BadgeDefinition:
    """A stored badge document and its claim documents (in claim order) as one definition."""
    doc.pop("_id", None)
    doc.pop("claimsVersion", None)  # written by earlier versions
    ownership = doc.get("ownership") or {}
    doc["ownership"] = ownership
    stored = [{k: c[k] for k in ("ownerType", "referenceId", "isActive")} for c in claims]
    ownership["claims"] = merge_claims(stored, list(ownership.get("claims") or []))
    return BadgeDefinition.model_validate(doc)


RequestKey = tuple[int, str]  # (orgId, requestId)

# On FerretDB v1 a find of up to this many values is sent as one equality find per value, not
# as one `$in`: PostgreSQL filters an equality (`_jsonb -> 'f' @> v`), but an `$in` has every
# document of the collection decoded and compared in FerretDB. Measured at 20,000 documents:
# `$in` of 10 values 761 ms, 10 equality finds 170 ms in all (the break-even is ~45 values).
EQUALITY_FINDS_MAX = 32
# Reused requestIds are confirmed by the origin block of their first user (per the cache) when
# they point at no more blocks than this; else by requestId.
REUSED_BLOCKS_MAX = 8


def ignores_indexes(build_info: Doc) -> bool:
    """Whether the server (its buildInfo) is FerretDB v1, whose finds use no index."""
    version = build_info.get("ferretdbVersion")
    return isinstance(version, str) and version.lstrip("v").startswith("1.")


def _rejection(intent: Doc, at: float) -> Doc:
    """The rejection marker of an intent: its _id, and its origin block if it has one (none on
    intents stored before blocks)."""
    doc = {"_id": intent["_id"], "orgId": intent["orgId"], "badgeMetaId": intent["badgeMetaId"],
           "requestId": intent["requestId"], "at": at}
    if intent.get(K.ORIGIN_BLOCK_FIELD) is not None:
        doc[K.ORIGIN_BLOCK_FIELD] = intent[K.ORIGIN_BLOCK_FIELD]
    return doc


def origin_block(origin: str) -> str:
    """The block of offsets of `origin` ("topic/partition/offset"), stored with what an earn
    writes (constants.ORIGIN_BLOCK_FIELD); an origin of another form is its own block."""
    head, _, offset = origin.rpartition("/")
    if not (head and offset.isascii() and offset.isdigit() and len(offset) <= 20):  # Kafka offsets: int64
        return origin
    return f"{head}/{int(offset) // K.ORIGIN_BLOCK_OFFSETS}"


@dataclass
class ResumeState:
    """What MongoDB holds for the requestIds of a batch that were in flight when a worker
    stopped, read with one query per collection for the whole batch: FerretDB reads every
    document of a collection for each find, so a find per redelivered record is what made a
    restart crawl. Only keys in `keys` were read; for the others nothing is known."""

    keys: set[RequestKey] = field(default_factory=set)
    ledger: dict[RequestKey, Doc] = field(default_factory=dict)
    outcomes: dict[Any, Doc] = field(default_factory=dict)  # by ledger _id
    earned: dict[RequestKey, Doc] = field(default_factory=dict)
    intents: dict[RequestKey, Doc] = field(default_factory=dict)
    issues: dict[RequestKey, Doc] = field(default_factory=dict)
    revoked_issues: dict[RequestKey, list[str]] = field(default_factory=dict)  # by the revoking requestId
    rejected: set[RequestKey] = field(default_factory=set)  # intents with a rejection marker


async def _ready(state: ResumeState) -> ResumeState:
    return state


@dataclass
class _Prefetch:
    done: asyncio.Future[ResumeState]
    keys: set[RequestKey] = field(default_factory=set)
    kinds: set[str] = field(default_factory=set)
    restart: bool = False  # some keys were in flight when a worker stopped
    blocks: dict[RequestKey, str] = field(default_factory=dict)  # earns in flight: read by block
    origins: dict[RequestKey, set[str]] = field(default_factory=dict)  # the messages asking for each key
    any_origin: set[RequestKey] = field(default_factory=set)  # keys asked for without their message's origin
    reused: dict[RequestKey, str] = field(default_factory=dict)  # reuses: the first user's origin, per the cache


@dataclass(frozen=True)
class LedgerEntry:
    id: ObjectId
    origin: str
    outcome: Doc | None
    new: bool


class Repositories:
    def __init__(self, db: AsyncDatabase[Doc], *, write_flushes: int = 4) -> None:
        self.db = db
        self.badges = db[K.BADGES]
        self.claims = db[K.BADGE_CLAIMS]
        self.requests = db[K.REQUESTS]
        self.issues = db[K.ISSUES]
        self.earned = db[K.EARNED]
        self.outcomes = db[K.OUTCOMES]
        self.intents = db[K.INTENTS]
        self.rejections = db[K.REJECTIONS]
        self.writes = WriteBatcher(flushes=write_flushes)
        self.prefetch_window = 0.05  # seconds the batches of other partitions may join a read
        # after a restart every partition's first batch asks, a few 10 ms apart (measured: two
        # loads 60 ms apart, each reading every collection): a longer wait makes them one
        self.restart_window = 0.5
        self._prefetch: _Prefetch | None = None
        self._prefetching: set[asyncio.Future[None]] = set()
        self.scans_every_find = False  # FerretDB v1 (learnt by ensure_indexes): see find_in

    def index_models(self) -> dict[AsyncCollection[Doc], list[IndexModel]]:
        """Every index the worker's and the read API's queries need on MongoDB (each query
        shape is checked against these: tests/integration/test_query_shapes.py)."""
        org_request = IndexModel([("orgId", ASCENDING), ("requestId", ASCENDING)], unique=True, name="org_request")
        org_customer_badge = IndexModel([("orgId", ASCENDING), ("customerId", ASCENDING),
                                         ("badgeMetaId", ASCENDING)], name="org_customer_badge")
        # the read API's statistics: active and expired counts per badge (api/)
        status_expiry = IndexModel([("orgId", ASCENDING), ("badgeMetaId", ASCENDING), ("status", ASCENDING),
                                    ("expiresOn", ASCENDING)], name="org_badge_status_expiry")
        # a restart's read of what the earns in flight wrote (_load_by_block); sparse: documents
        # stored before blocks, and issues, have none
        origin = IndexModel([(K.ORIGIN_BLOCK_FIELD, ASCENDING)], name="origin_block", sparse=True)
        return {
            self.requests: [org_request, origin],
            self.outcomes: [origin],
            self.issues: [org_request, org_customer_badge,
                          IndexModel([("orgId", ASCENDING), ("revokedBy", ASCENDING)], name="org_revoked_by"),
                          status_expiry],
            self.intents: [org_request, IndexModel([("orgId", ASCENDING), ("badgeMetaId", ASCENDING),
                                                    ("status", ASCENDING)], name="org_badge_status"), origin],
            self.earned: [
                org_request, org_customer_badge,
                IndexModel([("orgId", ASCENDING), ("customerId", ASCENDING), ("badgeGroupId", ASCENDING)],
                           name="org_customer_group"),
                # the rebuild's held earns, and the read API's counts per cycle (eventDate)
                IndexModel([("orgId", ASCENDING), ("badgeMetaId", ASCENDING), ("status", ASCENDING),
                            ("eventDate", ASCENDING)], name="org_badge_status_date"),
                status_expiry, origin,
            ],
            self.rejections: [IndexModel([("orgId", ASCENDING), ("badgeMetaId", ASCENDING)], name="org_badge"),
                              # a redelivered batch looks its requestIds up (prefetch_resume)
                              IndexModel([("orgId", ASCENDING), ("requestId", ASCENDING)], name="org_request"),
                              origin],
            self.badges: [IndexModel([("orgId", ASCENDING), ("badgeGroupId", ASCENDING)], name="org_group")],
            self.claims: [IndexModel([("orgId", ASCENDING), ("badgeMetaId", ASCENDING), ("order", ASCENDING)],
                                     name="org_badge_order")],
        }

    async def ensure_indexes(self) -> None:
        """Create the missing indexes of index_models(). On FerretDB v1 only the unique ones,
        for their constraint: it serves no find from an index (each find is a scan, measured
        by `_id` too) but keeps every index up to date on each insert."""
        scans_anyway = self.scans_every_find = ignores_indexes(await self.db.client.admin.command("buildInfo"))
        # Only the missing ones, one per call: FerretDB 1.24 drops the connection (a panic) when
        # one createIndexes names several existing indexes, and index creation next to other
        # writers is where it deadlocks; a restarted worker then creates nothing.
        for collection, models in self.index_models().items():
            existing = {ix["name"] async for ix in await collection.list_indexes()}
            for model in models:
                if scans_anyway and not model.document.get("unique"):
                    continue
                if model.document["name"] not in existing:
                    await collection.create_indexes([model])

    async def find_in(self, collection: AsyncCollection[Doc], base: Doc, name: str, values: Iterable[Any],
                      projection: Doc | None = None) -> list[Doc]:
        """The documents matching `base` whose field `name` is one of `values`: one `$in` find,
        or on FerretDB v1 with few values one equality find each (EQUALITY_FINDS_MAX)."""
        wanted = list(dict.fromkeys(values))
        if not wanted:
            return []
        if self.scans_every_find and len(wanted) <= EQUALITY_FINDS_MAX:
            found = await asyncio.gather(*(collection.find({**base, name: value}, projection).to_list()
                                           for value in wanted))
            return [d for docs in found for d in docs]
        return await collection.find({**base, name: {"$in": wanted}}, projection).to_list()

    # ---- badge definitions
    async def upsert_badge(self, badge: BadgeDefinition) -> None:
        """Store a definition (`badges load`): insert it, or update the stored one field by
        field. Claims are not part of the badge document: each lives in `badge_claims` under
        its own `_id`, because FerretDB applies an update as read-modify-write of the whole
        document without a transaction, so a load's `$set` beside a claim command's update of
        the same document can silently undo the claim (seen under a race test).

        Claims rule: a stored claim (same ownerType case-insensitively, same referenceId as a
        string) wins over the file's; the file's other claims are inserted (insert only: a
        claim recorded meanwhile by a claim command makes the insert fail and wins). So a load
        never drops or reactivates a claim; only `unclaim` commands deactivate one. Fields of
        the stored definition that the file no longer has are removed.
        """
        doc = badge.to_document()
        key = badge_key(badge.id)
        doc["_id"] = key
        ownership = dict(doc.get("ownership") or {})
        file_claims: list[Doc] = list(ownership.pop("claims", None) or [])
        if "ownership" in doc:
            doc["ownership"] = ownership
        attempt = 0
        while True:
            attempt += 1
            try:
                stored = await self.badges.find_one({"_id": key})
                if stored is not None and stored.get("orgId", badge.orgId) != badge.orgId:
                    # ids are global (the vendor's ObjectIds): a load must never take another
                    # org's badge over, so the tenant of a stored definition never changes
                    raise BadgeOfAnotherOrg(badge.id)
                if stored is None:
                    async with self.writes.lock:
                        await self.badges.insert_one(doc)
                    break
                # claims embedded by an earlier version move to their own documents first
                legacy = list((stored.get("ownership") or {}).get("claims") or [])
                await self._insert_claims(int(stored.get("orgId", doc["orgId"])), badge.id, legacy)
                updates: Doc = {k: v for k, v in doc.items() if k not in ("_id", "ownership")}
                removed = [k for k in stored if k not in doc and k not in ("_id", "ownership")]
                updates.update({f"ownership.{k}": v for k, v in ownership.items()})
                removed += [f"ownership.{k}" for k in (stored.get("ownership") or {}) if k not in ownership]
                change: Doc = {"$set": updates}
                if removed:
                    change["$unset"] = dict.fromkeys(removed, "")
                async with self.writes.lock:
                    await self.badges.update_one({"_id": key}, change)
                break
            except DuplicateKeyError:
                if attempt >= 20:  # pragma: no cover - a duplicate we cannot then read
                    raise
                # inserted by another loader meanwhile: update that one
            except OperationFailure as exc:
                if not is_transient_write_error(str(exc)) or attempt >= 20:
                    raise
                await asyncio.sleep(min(1.0, 0.05 * attempt))  # FerretDB's SQLite is busy
        await self._insert_claims(int(doc["orgId"]), badge.id, file_claims)

    async def _insert_claims(self, org: int, badge_id: str, claims: list[Doc]) -> None:
        """Insert each claim whose pair has no document yet; a stored one wins."""
        for claim in claims:
            try:
                async with self.writes.lock:
                    await self.claims.insert_one(self._claim_doc(org, badge_id, Claim.model_validate(claim)))
            except DuplicateKeyError:
                continue

    @staticmethod
    def _claim_doc(org: int, badge_id: str, claim: Claim) -> Doc:
        owner, ref = _claim_pair(claim.model_dump(mode="json"))
        return {"_id": f"{org}|{badge_id}|{owner}|{ref}", "orgId": org, "badgeMetaId": badge_id,
                "ownerType": claim.ownerType, "referenceId": claim.referenceId, "isActive": claim.isActive,
                "order": ObjectId()}

    async def get_badge(self, org: int, badge_id: str) -> BadgeDefinition | None:
        doc, claims = await asyncio.gather(
            self.badges.find_one({"_id": badge_key(badge_id), "orgId": org}),
            self.claims.find({"orgId": org, "badgeMetaId": badge_id}).sort("order", ASCENDING).to_list())
        return None if doc is None else definition(doc, claims)

    async def set_claim(self, org: int, badge_id: str, claim: Claim) -> bool:
        """Set one owner's claim (isActive true or false) in its own document. True if the
        claim changed. Claims of one badge arrive in order on one partition, so one writer at a
        time updates a claim document; a loader only ever inserts one."""
        key = self._claim_doc(org, badge_id, claim)["_id"]
        while True:
            current = await self.claims.find_one({"_id": key})
            if current is None:
                badge = await self.get_badge(org, badge_id)  # an embedded claim of an earlier version
                if badge is None:
                    return False
                pair = _claim_pair(claim.model_dump(mode="json"))
                was = next((c.isActive for c in badge.ownership.claims
                            if _claim_pair(c.model_dump(mode="json")) == pair), False)
                if was == claim.isActive:  # unclaiming a pair never claimed is no change either
                    return False
                try:
                    async with self.writes.lock:
                        await self.claims.insert_one(self._claim_doc(org, badge_id, claim))
                    return True
                except DuplicateKeyError:
                    continue  # a loader inserted it meanwhile: decide against that one
            if bool(current.get("isActive", True)) == claim.isActive:
                return False
            async with self.writes.lock:
                await self.claims.update_one({"_id": key}, {"$set": {"isActive": claim.isActive}})
            return True

    # ---- the requestId ledger
    async def prefetch_resume(self, keys: Iterable[RequestKey], kinds: Iterable[str] | None = None, *,
                              restart: bool = False, blocks: Mapping[RequestKey, str] | None = None,
                              origins: Iterable[tuple[RequestKey, str]] | None = None,
                              reused: Mapping[RequestKey, str] | None = None) -> ResumeState:
        """What MongoDB holds for `keys` (see ResumeState); `kinds`: the command types among
        them, so that only the collections they write are read; `restart`: some were in flight
        when a worker stopped (the batches of other partitions are waited for longer);
        `blocks`: earns that were in flight, each with the origin block of its message — read
        by block (see _load_by_block), and a key whose ledger entry is not there by requestId
        next; `origins`: (key, origin) of the messages
        asking, so that for a key whose ledger entry is another message's (its requestId
        reused: the asker's answer is 809) only the ledger is read. Without them every entry
        is taken as possibly the asker's own; `reused`: requestIds the cache says another
        message used first, with that message's origin — confirmed in the ledger by the block
        of that origin (see _load_reused).

        The batches of every partition that ask within PREFETCH_WINDOW_S share one read: on
        FerretDB each find reads the whole collection whatever its filter (measured: seconds
        per find over a few 10,000 documents while a restart redoes its backlog), so a read per
        partition batch and collection, timed out and sent again, is what made a restart crawl."""
        pending = self._prefetch
        if pending is None:
            pending = self._prefetch = _Prefetch(asyncio.get_running_loop().create_future())
            window = self.restart_window if restart else self.prefetch_window
            asyncio.get_running_loop().call_later(window, self._start_prefetch, pending)
        keys = list(keys)
        pending.keys.update(keys)
        pending.kinds.update(kinds if kinds is not None else ("earn", "issue"))
        pending.restart |= restart
        pending.blocks.update(blocks or {})
        pending.reused.update(reused or {})
        if origins is None:
            pending.any_origin.update(keys)
        else:
            for key, origin in origins:
                pending.origins.setdefault(key, set()).add(origin)
        return await asyncio.shield(pending.done)

    def _start_prefetch(self, pending: _Prefetch) -> None:
        if self._prefetch is pending:
            self._prefetch = None

        async def run() -> None:
            try:
                began = time.monotonic()
                owners = {key: found for key, found in pending.origins.items() if key not in pending.any_origin}
                state = await self._load_resume(pending.keys, pending.kinds, restart=pending.restart,
                                                blocks=pending.blocks, owners=owners, reused=pending.reused)
                pending.done.set_result(state)
                log.info("resume_loaded", keys=len(state.keys), by_block=len(pending.blocks), ledger=len(state.ledger),
                         outcomes=len(state.outcomes), intents=len(state.intents), earned=len(state.earned),
                         seconds=round(time.monotonic() - began, 3))
            except asyncio.CancelledError:
                pending.done.cancel()
                raise
            except Exception as exc:  # every waiter sees it
                pending.done.set_exception(exc)
                pending.done.exception()  # read here too: every waiter may have been cancelled

        self._prefetching.add(task := asyncio.ensure_future(run()))
        task.add_done_callback(self._prefetching.discard)

    async def _load_resume(self, keys: Iterable[RequestKey], kinds: Iterable[str], *, restart: bool = False,
                           blocks: Mapping[RequestKey, str] | None = None,
                           owners: Mapping[RequestKey, Collection[str]] | None = None,
                           reused: Mapping[RequestKey, str] | None = None) -> ResumeState:
        """`keys` by requestId, `blocks` by block, `reused` by their first user's block (each
        less the keys of the ones before), side by side; then by requestId the keys of the
        last two that their blocks did not hold. One state for all. `owners`: the origins
        asking for a key (see _load_by_request)."""
        asked = set(keys)
        by_block = {key: block for key, block in (blocks or {}).items() if key not in asked}
        confirm = {key: first for key, first in (reused or {}).items() if key not in asked and key not in by_block}
        if len({origin_block(first) for first in confirm.values()}) > REUSED_BLOCKS_MAX:
            # by requestId, then, every collection: one the cache calls a reuse may be the
            # asker's own (the cache was wrong), of any command type
            asked |= set(confirm)
            kinds = {*kinds, "earn", "issue"}
            confirm = {}
        nothing = ResumeState()
        states = await asyncio.gather(
            self._load_by_request(asked, kinds, restart=restart, owners=owners) if asked else _ready(nothing),
            self._load_by_block(by_block) if by_block else _ready(nothing),
            self._load_reused(confirm) if confirm else _ready(nothing))
        found = [state for state in states if state is not nothing]
        later: list[Awaitable[ResumeState]] = []
        if by_block and (elsewhere := set(by_block) - states[1].keys):
            # ledger entries outside the asker's block (a reuse whose Redis key was lost, an
            # entry from before blocks): by requestId, so that none is left to a find of its own
            later.append(self._load_by_request(elsewhere, ("earn",), restart=restart, owners=owners))
        if confirm and (unconfirmed := set(confirm) - states[2].keys):
            # the cache was wrong (a data loss): these are read by requestId after all, every
            # collection (the asker's command may be any type)
            later.append(self._load_by_request(unconfirmed, ("earn", "issue"), restart=restart, owners=owners))
        found += await asyncio.gather(*later)
        merged, *others = found or [nothing]
        for other in others:
            for name in ("ledger", "outcomes", "earned", "intents", "issues", "revoked_issues"):
                getattr(merged, name).update(getattr(other, name))
            merged.keys |= other.keys
            merged.rejected |= other.rejected
        return merged

    async def _load_reused(self, reused: Mapping[RequestKey, str]) -> ResumeState:
        """The ledger entries of requestIds the cache says another message used first (key ->
        its origin), read by that origin's block (one equality find per block, which FerretDB
        filters in PostgreSQL; a `requestId: {$in}` has it decode every document). The state
        vouches only for keys whose entry there is that message's: a reuse, answered 809 from
        the ledger alone. The other keys (the cache was wrong, e.g. after a data loss) are read
        by requestId next (_load_resume)."""
        names = sorted({origin_block(first) for first in reused.values()})
        found = await asyncio.gather(*(self.requests.find({K.ORIGIN_BLOCK_FIELD: name}).to_list() for name in names))
        state = ResumeState()
        for d in (d for docs in found for d in docs):
            key: RequestKey = (d["orgId"], d["requestId"])
            if reused.get(key) == d["origin"]:
                state.ledger[key] = d
                state.keys.add(key)
        return state

    async def _load_by_block(self, blocks: Mapping[RequestKey, str]) -> ResumeState:
        """What the earns of `blocks` wrote, read with one find per collection and block: all
        that the messages of a block wrote (a few hundred offsets of one partition), kept for
        the wanted keys. The state holds the keys whose ledger entry is in the block: an entry
        elsewhere was written by another message (the requestId reused) or before blocks were
        stored, and the key is read by requestId next (_load_resume). On FerretDB an equality
        filter is evaluated by PostgreSQL, so only the block's documents are decoded (a
        `requestId: {$in}` over 1,000 keys decoded and compared every document: 6 s in a bench
        restart)."""
        names = sorted(set(blocks.values()))

        async def read(collection: AsyncCollection[Doc], projection: Doc | None = None, *,
                       by_key: bool = True) -> list[Doc]:
            found = await asyncio.gather(*(collection.find({K.ORIGIN_BLOCK_FIELD: name}, projection).to_list()
                                           for name in names))
            return [d for docs in found for d in docs if not by_key or (d.get("orgId"), d.get("requestId")) in blocks]

        ledger, outcomes, earned, intents, rejected = await asyncio.gather(
            read(self.requests), read(self.outcomes, by_key=False), read(self.earned), read(self.intents),
            read(self.rejections, {"orgId": 1, "requestId": 1}))
        state = ResumeState()
        state.ledger = {(d["orgId"], d["requestId"]): d for d in ledger}
        state.keys = set(state.ledger)
        ledger_ids = {d["_id"] for d in ledger}
        state.outcomes = {d["_id"]: stored_outcome.outcome_of(d) for d in outcomes if d["_id"] in ledger_ids}
        open_keys = {key for key, d in state.ledger.items() if d["_id"] not in state.outcomes}
        state.rejected = {key for d in rejected if (key := (d["orgId"], d["requestId"])) in open_keys}
        for target, stored in ((state.earned, earned), (state.intents, intents)):
            target.update({key: unpack(d) for d in stored if (key := (d["orgId"], d["requestId"])) in open_keys})
        return state

    async def _load_by_request(self, keys: set[RequestKey], kinds: Iterable[str], chunk: int = 5000, *,
                               restart: bool = False, owners: Mapping[RequestKey, Collection[str]] | None = None
                               ) -> ResumeState:
        """The ledger, then the stored outcomes, then the collections a command writes, each
        only for the keys that need it: outcomes for the keys whose ledger entry is the asker's
        own (`owners`: the origins asking for each key; a key not in it is taken as own), and
        what was written for the own keys with no outcome yet (the others are answered from it,
        and a key with no ledger entry wrote nothing). A requestId reused by another message
        costs the ledger alone: its answer is 809 whatever the first user's state.

        After a restart (`restart`: some keys were in flight) most own keys are undecided, so
        the written collections are read beside the outcomes, not after them. Otherwise
        (requestIds reused, Redis lost its cache) they are read after, only for the undecided
        keys, and not at all when there are none."""
        state = ResumeState(keys=keys)
        wanted = set(kinds)
        earns = bool(wanted & {"earn", "revokeEarn"})
        issues = bool(wanted & {"issue", "revokeIssue"})

        def by_org(request_keys: Iterable[RequestKey]) -> list[tuple[int, list[str]]]:
            grouped: dict[int, list[str]] = {}
            for org, request_id in request_keys:
                grouped.setdefault(org, []).append(request_id)
            return [(org, ids[start:start + chunk]) for org, ids in grouped.items()
                    for start in range(0, len(ids), chunk)]

        for org, ids in by_org(state.keys):
            state.ledger.update({(org, d["requestId"]): d for d in
                                 await self.find_in(self.requests, {"orgId": org}, "requestId", ids)})
        own = {key: d for key, d in state.ledger.items()
               if owners is None or key not in owners or d["origin"] in owners[key]}

        async def outcomes() -> None:
            ledger_ids = [d["_id"] for d in own.values()]
            for start in range(0, len(ledger_ids), chunk):
                state.outcomes.update({d["_id"]: stored_outcome.outcome_of(d) for d in
                                       await self.find_in(self.outcomes, {}, "_id", ledger_ids[start:start + chunk])})

        def undecided() -> set[RequestKey]:
            return {key for key, d in own.items() if d["_id"] not in state.outcomes}

        async def nothing() -> list[Doc]:
            return []

        async def written(org: int, ids: list[str]) -> list[list[Doc]]:
            base = {"orgId": org}
            return list(await asyncio.gather(
                self.find_in(self.earned, base, "requestId", ids) if earns else nothing(),
                self.find_in(self.intents, base, "requestId", ids) if earns else nothing(),
                self.find_in(self.rejections, base, "requestId", ids, {"requestId": 1}) if earns else nothing(),
                self.find_in(self.issues, base, "requestId", ids) if issues else nothing(),
                self.find_in(self.issues, base, "revokedBy", ids, {"_id": 1, "revokedBy": 1})
                if issues else nothing()))

        if restart:
            groups = by_org(own)
            found = (await asyncio.gather(outcomes(), *(written(org, ids) for org, ids in groups)))[1:]
        else:
            await outcomes()
            groups = by_org(undecided())
            found = [await written(org, ids) for org, ids in groups]
        open_keys = undecided()
        for (org, _), docs in zip(groups, found, strict=True):
            earned, intents, rejected, issued, revoked = docs  # type: ignore[misc]
            state.rejected.update(key for d in rejected if (key := (org, d["requestId"])) in open_keys)
            for target, stored in ((state.earned, earned), (state.intents, intents), (state.issues, issued)):
                target.update({key: unpack(d) for d in stored if (key := (org, d["requestId"])) in open_keys})
            for d in revoked:
                if (org, d["revokedBy"]) in open_keys:
                    state.revoked_issues.setdefault((org, d["revokedBy"]), []).append(str(d["_id"]))
        return state

    async def ledger_insert_many(self, items: Sequence[tuple[int, str, str, str]]) -> list[LedgerEntry | None]:
        """Register each command (orgId, requestId, origin, type) as the first user of its
        requestId, all in one batched insert; None where another was first."""
        now = time.time()
        docs: list[Doc] = [{"_id": ObjectId(), "orgId": org, "requestId": request_id, "origin": origin,
                            "type": kind, "createdAt": now, K.ORIGIN_BLOCK_FIELD: origin_block(origin)}
                           for org, request_id, origin, kind in items]
        entries: list[LedgerEntry | None] = []
        for doc, error in zip(docs, await self.writes.insert_each(self.requests, docs), strict=True):
            if isinstance(error, DuplicateKeyError):
                entries.append(None)
            elif error is not None:
                raise error
            else:
                entries.append(LedgerEntry(doc["_id"], doc["origin"], None, new=True))
        return entries

    async def ledger_claim(self, org: int, request_id: str, origin: str, kind: str,
                           resume: ResumeState | None = None) -> LedgerEntry:
        """Register the command, or find whoever used requestId first (`new` tells which).
        With `resume` holding this requestId, what it read answers without a query."""
        if resume is not None and (org, request_id) in resume.keys:
            known = resume.ledger.get((org, request_id))
            if known is not None:
                stored = resume.outcomes.get(known["_id"])
                return LedgerEntry(known["_id"], known["origin"], stored, new=False)
        ledger_id = ObjectId()
        try:
            await self.writes.insert(self.requests, {"_id": ledger_id, "orgId": org, "requestId": request_id,
                                                     "origin": origin, "type": kind, "createdAt": time.time(),
                                                     K.ORIGIN_BLOCK_FIELD: origin_block(origin)})
            return LedgerEntry(ledger_id, origin, None, new=True)
        except DuplicateKeyError:
            doc = await self.requests.find_one({"orgId": org, "requestId": request_id})
            if doc is None:  # pragma: no cover - the duplicate vanished; nothing deletes ledger docs
                raise
            stored = await self.outcomes.find_one({"_id": doc["_id"]})
            outcome = None if stored is None else stored_outcome.outcome_of(stored)
            return LedgerEntry(doc["_id"], doc["origin"], outcome, new=False)

    async def ledger_store_outcomes(self, items: Iterable[tuple[ObjectId, Doc, str]]) -> dict[ObjectId, Doc]:
        """Keep the first outcome of each ledger entry (its _id, the outcome, the origin of the
        message decided): inserted under the entry's _id (batched inserts are cheap where
        updates are not, and a second outcome is a duplicate key).

        Returns the outcomes stored earlier for entries that had one (two runs of the same
        message overlapped: a zombie, a revoked batch): the caller publishes those instead."""
        now = time.time()
        items = list(items)
        results = await self.writes.insert_each(self.outcomes, [
            stored_outcome.document(ledger_id, outcome, now, origin_block(origin))
            for ledger_id, outcome, origin in items])
        earlier: list[ObjectId] = []
        for (ledger_id, _, _), result in zip(items, results, strict=True):
            if isinstance(result, DuplicateKeyError):
                earlier.append(ledger_id)
            elif isinstance(result, BaseException):
                raise result
        if not earlier:
            return {}
        return {d["_id"]: stored_outcome.outcome_of(d) for d in await self.find_in(self.outcomes, {}, "_id", earlier)}

    # ---- issues
    async def active_issues(self, org: int, customer: int, badge_id: str) -> list[IssueRecord]:
        cursor = self.issues.find({"orgId": org, "customerId": customer, "badgeMetaId": badge_id,
                                   "status": "ACTIVE"})
        return [IssueRecord(str(d["_id"]), d["issuedOn"], d.get("expiresOn"), True) async for d in cursor]

    async def _insert_once(self, collection: AsyncCollection[Doc], body: Doc) -> Doc:
        """Insert `body` unless its (orgId, requestId) is there already: the stored document
        either way (new, or the one written before a crash or by an earlier delivery), with
        its PACKED_FIELDS as they were given."""
        try:
            await self.writes.insert(collection, pack(body))
            return body
        except DuplicateKeyError:
            found = await collection.find_one({"orgId": body["orgId"], "requestId": body["requestId"]})
            assert found is not None
            return unpack(found)

    async def insert_issue(self, org: int, request_id: str, doc: Doc) -> Doc:
        return await self._insert_once(self.issues, {"orgId": org, "requestId": request_id, "status": "ACTIVE", **doc})

    async def revoke_issues(self, org: int, issued_ids: Sequence[str], by_request: str) -> None:
        ids = [as_object_id(i) for i in issued_ids]
        async with self.writes.lock:
            await self.issues.update_many({"_id": {"$in": [i for i in ids if i is not None]}, "orgId": org,
                                           "status": "ACTIVE"},
                                          {"$set": {"status": "REVOKED", "revokedBy": by_request,
                                                    "revokedAt": time.time()}})

    async def issues_revoked_by(self, org: int, request_id: str) -> list[str]:
        return [str(d["_id"]) async for d in self.issues.find({"orgId": org, "revokedBy": request_id}, {"_id": 1})]

    # ---- earned badges
    # An earn with limits first writes an intent (PENDING, with the limits it is about to
    # take), then takes the limits in Redis, then writes the earned badge, ACTIVE, under the
    # intent's ObjectId. A refused earn inserts a rejection marker for its intent. All three
    # are inserts, batched (an update costs FerretDB ~10 ms where a batched insert costs
    # well under 1 ms). A rebuild counts the ACTIVE earned badges as held and the intents with
    # neither an earned badge nor a rejection marker as provisional.
    async def insert_intent(self, org: int, request_id: str, doc: Doc) -> Doc:
        """The earn's intent, idempotent per requestId."""
        return await self._insert_once(self.intents, {"orgId": org, "requestId": request_id,
                                                      "status": EarnStatus.PENDING, **doc})

    async def insert_intents(self, items: Sequence[tuple[int, str, Doc]]) -> list[BaseException | None]:
        """insert_intent() for many fresh earns (org, requestId, body) in one batched insert:
        each one's error, or None. A duplicate is left to the caller (insert_intent finds it)."""
        return await self.writes.insert_each(self.intents, [
            pack({"orgId": org, "requestId": request_id, "status": EarnStatus.PENDING, **doc})
            for org, request_id, doc in items])

    async def insert_earned_many(self, items: Sequence[tuple[int, str, Doc]]) -> list[BaseException | None]:
        """insert_earned() for many earns in one batched insert: each one's error, or None."""
        return await self.writes.insert_each(self.earned, [
            pack({"orgId": org, "requestId": request_id, "status": EarnStatus.ACTIVE, **doc})
            for org, request_id, doc in items])

    async def reject_intents(self, intents: Sequence[Doc]) -> list[BaseException | None]:
        """reject_intent() for many intents in one batched insert: each one's error, or None
        (a marker that is there already counts as written)."""
        now = time.time()
        errors = await self.writes.insert_each(self.rejections, [_rejection(i, now) for i in intents])
        return [None if isinstance(e, DuplicateKeyError) else e for e in errors]

    async def reject_intent(self, intent: Doc) -> None:
        """Mark the intent refused (idempotent: the marker's _id is the intent's)."""
        with contextlib.suppress(DuplicateKeyError):
            await self.writes.insert(self.rejections, _rejection(intent, time.time()))

    async def reopen_intent(self, intent_id: Any) -> None:
        """A redelivered earn is decided again: its intent counts as pending until then."""
        async with self.writes.lock:
            await self.rejections.delete_one({"_id": intent_id})

    async def insert_earned(self, org: int, request_id: str, doc: Doc) -> Doc:
        """The earned badge (ACTIVE), idempotent per requestId."""
        return await self._insert_once(self.earned, {"orgId": org, "requestId": request_id,
                                                     "status": EarnStatus.ACTIVE, **doc})

    async def find_earned_by_request(self, org: int, request_id: str) -> Doc | None:
        found = await self.earned.find_one({"orgId": org, "requestId": request_id})
        return None if found is None else unpack(found)

    async def find_intent(self, org: int, request_id: str) -> Doc | None:
        found = await self.intents.find_one({"orgId": org, "requestId": request_id})
        return None if found is None else unpack(found)

    async def get_earned(self, org: int, earned_id: str) -> tuple[EarnedRecord, Doc] | None:
        oid = as_object_id(earned_id)
        if oid is None:
            return None
        # By _id alone, the org checked here: FerretDB reads a filter of several fields several
        # times slower, and on MongoDB the _id index answers either way.
        doc = await self.earned.find_one({"_id": oid})
        if doc is None or doc.get("orgId") != org:
            return None
        unpack(doc)
        return EarnedRecord(str(doc["_id"]), doc["customerId"], doc["badgeMetaId"], doc["status"]), doc

    async def revoke_earned(self, earned_id: Any, by_request: str) -> None:
        """By _id alone (see get_earned): the caller checked it is ACTIVE, and the commands of
        one customer, hence of one earned badge, run one at a time."""
        await self.writes.update(self.earned, {"_id": earned_id},
                                 {"$set": {"status": EarnStatus.REVOKED, "revokedBy": by_request,
                                           "revokedAt": time.time()}})

    async def held_earns(self, org: int, badge_id: str, *, revoked_since: float | None = None) -> list[HeldEarn]:
        """Every earn that counts towards the badge's limits: ACTIVE earned badges (held), and
        intents neither rejected nor turned into an earned badge yet (provisional); with
        `revoked_since`, also the earns revoked since then (revoked_at set; not counted)."""
        resolved: set[str] = set()
        held: list[HeldEarn] = []
        async for d in self.earned.find({"orgId": org, "badgeMetaId": badge_id},
                                        {"requestId": 1, "eventDate": 1, "limits": 1, "status": 1, "earnedOn": 1,
                                         "revokedAt": 1}):
            resolved.add(d["requestId"])
            if d["status"] == EarnStatus.ACTIVE:
                held.append(HeldEarn(d["requestId"], d["eventDate"], counter_refs(d), confirmed=True,
                                     earned_on=d.get("earnedOn")))
            elif (d["status"] == EarnStatus.REVOKED and revoked_since is not None
                  and float(d.get("revokedAt") or 0.0) >= revoked_since):
                held.append(HeldEarn(d["requestId"], d["eventDate"], counter_refs(d), confirmed=True,
                                     earned_on=d.get("earnedOn"), revoked_at=float(d.get("revokedAt") or 0.0)))
        async for d in self.rejections.find({"orgId": org, "badgeMetaId": badge_id}, {"requestId": 1}):
            resolved.add(d["requestId"])
        async for d in self.intents.find({"orgId": org, "badgeMetaId": badge_id},
                                         {"requestId": 1, "eventDate": 1, "limits": 1, "earnedOn": 1}):
            if d["requestId"] not in resolved:
                held.append(HeldEarn(d["requestId"], d["eventDate"], counter_refs(d), confirmed=False,
                                     earned_on=d.get("earnedOn")))
        return held

    async def ping(self) -> bool:
        await self.db.command("ping")
        return True

    # ---- counter watermarks (service/counters.py): per badge, the highest counter seq seen
    async def counter_mark(self, org: int, badge_id: str) -> int:
        """The badge's watermark (0 if none): a process reads it once per badge, on first use."""
        doc = await self.db[K.COUNTER_MARKS].find_one({"_id": f"{org}:{badge_id}"})
        return int(doc.get("seq") or 0) if doc is not None else 0

    async def raise_counter_mark(self, org: int, badge_id: str, seq: int) -> None:
        """Raise the watermark to `seq` (never lowers it): one update by _id."""
        async with self.writes.lock:
            await self.db[K.COUNTER_MARKS].update_one({"_id": f"{org}:{badge_id}"},
                                                     {"$max": {"seq": int(seq)}, "$set": {"at": time.time()}},
                                                     upsert=True)

    async def earned_limits(self, org: int, request_id: str) -> list[CounterRef] | None:
        """The counters a revoked earned badge took (None: no such revoked earn)."""
        doc = await self.earned.find_one({"orgId": org, "requestId": request_id},
                                         {"status": 1, "limits": 1, "eventDate": 1})
        if doc is None or doc.get("status") != EarnStatus.REVOKED:
            return None
        return counter_refs(doc)

    async def badge_ids(self, org: int | None = None) -> list[tuple[int, str]]:
        """(orgId, badge id) of every stored badge definition (of one org)."""
        found = self.badges.find({} if org is None else {"orgId": org}, {"orgId": 1, "id": 1})
        return sorted([(int(d["orgId"]), str(d.get("id") or d["_id"])) async for d in found])


class DlqReplayMarks:
    """`dlq_replays`: one document per DLQ record that `dlq replay` re-published, `_id` =
    "dlqtopic/partition/offset", `state` PENDING (written inside the Kafka transaction that
    re-publishes it, with the replay's own coordinates in `target`) then DONE once that
    transaction committed. See service/replay.py for how a PENDING mark is settled."""

    PENDING = "PENDING"
    DONE = "DONE"

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.marks = db[K.DLQ_REPLAYS]
        self.writes = WriteBatcher()

    async def find(self, ids: Sequence[str]) -> dict[str, Doc]:
        if not ids:
            return {}
        return {d["_id"]: d async for d in self.marks.find({"_id": {"$in": list(ids)}})}

    async def insert_pending(self, docs: Sequence[Doc]) -> None:
        """Insert PENDING marks (batched); DuplicateKeyError if any record is marked already."""
        now = time.time()
        results = await asyncio.gather(*(self.writes.insert(self.marks, {**d, "state": self.PENDING,
                                                                         "createdAt": now}) for d in docs),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def mark_done(self, ids: Sequence[str]) -> None:
        await asyncio.gather(*(self.writes.update(self.marks, {"_id": i},
                                                  {"$set": {"state": self.DONE, "doneAt": time.time()}})
                               for i in ids))

    async def forget(self, mark_id: str) -> None:
        """Drop a PENDING mark whose transaction never committed: the record was not replayed."""
        async with self.writes.lock:
            await self.marks.delete_one({"_id": mark_id, "state": self.PENDING})

