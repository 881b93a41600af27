"""decode -> dedupe -> rules -> reserve -> persist, for one partition batch.

Commands on the same entity (a customer on the earns topic, a badge on the claims topic)
run one after the other in offset order; different entities run concurrently. Every effect
is idempotent per (orgId, requestId), so a batch that is retried after a crash or an outage
produces the same effects and the same outcomes.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from bson import ObjectId

from badge_worker import constants as K
from badge_worker import logs
from badge_worker.adapters.mongo import LedgerEntry, Repositories, ResumeState, counter_refs, origin_block
from badge_worker.adapters.redis_store import CounterRef, NeedsRebuild, RedisStore, limit_docs
from badge_worker.adapters.request_cache import RequestCache, RequestClaim
from badge_worker.domain import events, rules
from badge_worker.domain.commands import Command, CommandType, Undecodable, decode
from badge_worker.domain.errors import ErrorCode, Rejection, reject
from badge_worker.domain.models import BadgeDefinition, Claim
from badge_worker.domain.outcomes import envelope
from badge_worker.domain.rules import LimitUsage
from badge_worker.domain.timeutil import iso
from badge_worker.errors import InfrastructureUnavailable, is_infra_error
from badge_worker.service import counters
from badge_worker.service.messages import InputRecord, Result
from badge_worker.service.resume import Resume
from badge_worker.service.slots import Slots

log = structlog.get_logger("badge_worker.processor")

Doc = dict[str, Any]


@dataclass(frozen=True)
class Accepted:
    """A command that succeeded: its outcome's data, and its notification event (none for claims).
    `from_earned_badge`: both are built from the stored earned badge alone, so any rerun of the
    command builds them again from there (its outcome needs no document of its own)."""

    data: Doc
    event: Doc | None = None
    from_earned_badge: bool = False


class BadgeCache:
    """Badge definitions for a few seconds: every earn reads one, claims change them rarely.

    One read per badge at a time: when an entry expires, the commands that ask meanwhile
    share the one read in flight (a batch has hundreds of them; each reading the badge
    itself cost ~8% of the drain's CPU in a profile and as many finds of FerretDB)."""

    def __init__(self, repos: Repositories, ttl: float) -> None:
        self.repos, self.ttl = repos, ttl
        self._items: OrderedDict[tuple[int, str], tuple[float, BadgeDefinition | None]] = OrderedDict()
        self._reading: dict[tuple[int, str], asyncio.Future[BadgeDefinition | None]] = {}
        self._forgets = 0  # a read begun before a forget() is answered but not kept

    async def get(self, org: int, badge_id: str) -> BadgeDefinition | None:
        key = (org, badge_id)
        hit = self._items.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        reading = self._reading.get(key)
        if reading is None:
            reading = asyncio.ensure_future(self._read(key, self._forgets))
            self._reading[key] = reading
            reading.add_done_callback(lambda done: self._done(key, done))
        return await asyncio.shield(reading)

    def _done(self, key: tuple[int, str], done: asyncio.Future[BadgeDefinition | None]) -> None:
        if self._reading.get(key) is done:
            self._reading.pop(key)
        if not done.cancelled():
            done.exception()  # read here too: every waiter may have been cancelled

    async def _read(self, key: tuple[int, str], forgets: int) -> BadgeDefinition | None:
        badge = await self.repos.get_badge(*key)
        if forgets == self._forgets:
            self._items[key] = (time.monotonic() + self.ttl, badge)
            self._items.move_to_end(key)
            while len(self._items) > 10_000:
                self._items.popitem(last=False)
        return badge

    def forget(self, org: int, badge_id: str) -> None:
        self._items.pop((org, badge_id), None)
        self._reading.pop((org, badge_id), None)
        self._forgets += 1


class Processor:
    def __init__(self, repos: Repositories, store: RedisStore, requests: RequestCache | None = None, *,
                 badge_cache_ttl: float = 2.0,
                 concurrency: int = 128, max_attempts: int = 3) -> None:
        self.repos, self.store = repos, store
        self.requests = requests or RequestCache(store.client, store.prefix, pipe=store.pipe)
        self.badges = BadgeCache(repos, badge_cache_ttl)
        self.max_attempts = max_attempts
        self._slots = Slots(concurrency)
        self._rebuilds: dict[tuple[int, str], asyncio.Future[None]] = {}
        self._handlers = {
            CommandType.CLAIM: self._claim,
            CommandType.UNCLAIM: self._claim,
            CommandType.ISSUE: self._issue,
            CommandType.EARN: self._earn,
            CommandType.REVOKE_ISSUE: self._revoke_issue,
            CommandType.REVOKE_EARN: self._revoke_earn,
        }

    # ------------------------------------------------------------------ batch
    async def process_batch(self, records: Sequence[InputRecord]) -> list[Result]:
        """Outcomes for `records`, in their order. Infrastructure errors propagate (the caller
        retries the whole batch); any other failure of one message ends as its own 500."""
        decoded = [decode(r.value, r.stream) for r in records]
        # The requestId cache for the whole batch in one round trip; then, for the messages
        # that were in flight when a worker stopped, what MongoDB holds, in one query per
        # collection (never a find per redelivered message).
        asking = [i for i, item in enumerate(decoded) if isinstance(item, Command) and item.requestId is not None]
        claims = dict(zip(asking, await self.requests.claim_many(
            [(decoded[i].orgId, decoded[i].requestId, records[i].origin) for i in asking]),  # type: ignore[misc]
            strict=True))
        # First uses (per the cache) are registered in the ledger for the whole batch at once;
        # a duplicate there (Redis lost the key) joins the ones that need a look at MongoDB.
        fresh = [i for i in asking if not claims[i].seen]
        inserted = await self.repos.ledger_insert_many([
            (decoded[i].orgId, decoded[i].requestId, records[i].origin, decoded[i].type.value)  # type: ignore[misc, union-attr]
            for i in fresh])
        entries = {i: e for i, e in zip(fresh, inserted, strict=True) if e is not None}
        # (`not seen` is "in fresh": a test on the list was O(batch²), 4.6% of the worker's samples)
        unsure = [i for i in asking if claims[i].resuming or claims[i].first_origin is not None
                  or (not claims[i].seen and i not in entries)]
        # Earns this same message started before a stop, or whose ledger entry exists though the
        # cache knew nothing (Redis lost it), are read by the block of their offsets (one cheap
        # find per collection and block on FerretDB); what the block does not hold, and the
        # rest, by requestId. Each asker's origin goes along: a requestId whose ledger entry is
        # another message's (a reuse: 809) costs the ledger alone.
        by_block = {i for i in unsure if decoded[i].type is CommandType.EARN and claims[i].first_origin is None}
        # A reuse per the cache is confirmed by the block of the first user's offset instead.
        reused = {i for i in unsure if claims[i].first_origin is not None}
        by_request = [i for i in unsure if i not in by_block and i not in reused]
        resume = await self.repos.prefetch_resume(
            [(decoded[i].orgId, decoded[i].requestId) for i in by_request],  # type: ignore[misc]
            {decoded[i].type.value for i in by_request},  # type: ignore[union-attr]
            restart=any(claims[i].resuming for i in unsure),
            blocks={(decoded[i].orgId, decoded[i].requestId): origin_block(records[i].origin)  # type: ignore[misc]
                    for i in by_block},
            origins=[((decoded[i].orgId, decoded[i].requestId), records[i].origin)  # type: ignore[misc]
                     for i in unsure],
            reused={(decoded[i].orgId, decoded[i].requestId): claims[i].first_origin  # type: ignore[misc]
                    for i in reused}) if unsure else None
        groups: dict[object, list[int]] = {}
        for i, item in enumerate(decoded):
            key = item.entity_key if isinstance(item, Command) else ("undecodable", i)
            groups.setdefault(key, []).append(i)
        results: list[Result | None] = [None] * len(records)
        # The first command of each entity, when it is a fresh earn, runs staged with the others
        # (all intents in one write, all reserves in one pipeline, all earned badges in one write);
        # the rest of its entity's commands run after it, one coroutine per entity.
        heads = [ix[0] for ix in groups.values() if self._stageable(decoded[ix[0]], claims.get(ix[0]),
                                                                     entries.get(ix[0]))]
        staged_task: asyncio.Task[None] | None = None
        if heads:
            async def run_staged() -> None:
                async with self._slots:
                    done = await self._earn_staged([(records[i], decoded[i], entries[i]) for i in heads],  # type: ignore[misc]
                                                   lambda n: (claims.get(heads[n]), resume))
                for i, result in zip(heads, done, strict=True):
                    results[i] = result
            staged_task = asyncio.create_task(run_staged())
        staged = set(heads)

        async def run_group(indexes: list[int]) -> None:
            if staged_task is not None and indexes[0] in staged:
                await asyncio.wait([staged_task])  # its outcome (or failure) is read with the others'
                if staged_task.cancelled() or staged_task.exception() is not None:
                    return
                indexes = indexes[1:]
            async with self._slots:  # shared by the batches of every partition
                for i in indexes:
                    results[i] = await self._handle_with_retries(records[i], decoded[i], claims.get(i), resume,
                                                                 entries.get(i))

        tasks = [asyncio.create_task(run_group(ix)) for ix in groups.values() if not (ix[0] in staged and len(ix) == 1)]
        if staged_task is not None:
            tasks.append(staged_task)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:
            # A revoke, or a shutdown past its grace: stop every group with us, and let each
            # finish the call it is in (bounded) so that none of it runs on beside the next owner.
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=4)
            raise
        for task in tasks:
            task.cancel()
        # Stop the rest of the batch before it is retried (nothing of it is committed), and
        # read every task's exception: an outage fails many at once.
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        failure = next((o for o in outcomes if isinstance(o, BaseException)
                        and not isinstance(o, asyncio.CancelledError)), None)
        if failure is not None:
            raise failure
        missing = [records[i].offset for i, r in enumerate(results) if r is None]
        if missing:
            # Never commit a batch with a hole in it: the caller retries the whole batch.
            raise RuntimeError(f"no outcome for offsets {missing[:10]}")
        return results  # type: ignore[return-value]  # every slot is filled (checked above)

    async def _handle_with_retries(self, record: InputRecord, item: Command | Undecodable,
                                   claim: RequestClaim | None = None, resume: ResumeState | None = None,
                                   entry: LedgerEntry | None = None) -> Result:
        org = item.orgId
        request_id = item.requestId
        bound = logs.MESSAGE.set({"topic": record.topic, "partition": record.partition, "offset": record.offset,
                                  "orgId": org, "requestId": request_id})
        try:
            last: Exception = RuntimeError("max_attempts is 0")
            for attempt in range(1, self.max_attempts + 1):
                try:
                    first = attempt == 1
                    return await self.handle(record, item, claim if first else None, resume, entry if first else None)
                except Exception as exc:
                    if is_infra_error(exc):
                        raise
                    last = exc
                    log.warning("message_failed", attempt=attempt, error=type(exc).__name__, reason=str(exc)[:300])
                    if attempt < self.max_attempts:
                        await asyncio.sleep(0.05 * attempt)
            log.error("message_gave_up", attempts=self.max_attempts)
            kind = item.type.value if isinstance(item, Command) else item.type
            rejection = reject(ErrorCode.PROCESSING_FAILED, f"failed {self.max_attempts} times")
            return Result(record, envelope(kind, org, request_id, None, rejection), to_dlq=True,
                          error_type=type(last).__name__, error_reason=str(last)[:1000])
        finally:
            logs.MESSAGE.reset(bound)

    # ------------------------------------------------------------------ one message
    async def handle(self, record: InputRecord, item: Command | Undecodable, claim: RequestClaim | None = None,
                     state: ResumeState | None = None, registered: LedgerEntry | None = None) -> Result:
        """One message. `claim`: its requestId cache answer, if the batch asked already;
        `state`: what MongoDB holds for the batch's messages that were in flight before;
        `registered`: its ledger entry, if the batch inserted it already."""
        if isinstance(item, Undecodable):
            return Result(record, envelope(item.type, item.orgId, item.requestId, None, item.rejection),
                          to_dlq=item.not_json)
        cmd = item
        origin = record.origin
        resume: Resume | None = None
        ledger_id = None
        if cmd.requestId is not None:
            if claim is None:
                claim = await self.requests.claim(cmd.orgId, cmd.requestId, origin)
            if claim.first_origin is None and claim.outcome is not None:
                return Result(record, claim.outcome, replayed=True)  # redelivered: no MongoDB read
            # The ledger is the truth; Redis only a hint (it may have lost the first user's
            # key and taken another's), so a reuse is confirmed there and the hint corrected.
            entry = registered or await self.repos.ledger_claim(cmd.orgId, cmd.requestId, origin, cmd.type.value,
                                                                 state)
            if entry.origin != origin:
                if claim.first_origin != entry.origin:
                    await self.requests.correct(cmd.orgId, cmd.requestId, entry.origin)
                return self._reused(record, cmd, entry.origin)
            if claim.first_origin is not None:
                await self.requests.correct(cmd.orgId, cmd.requestId, origin)
            if not entry.new:
                if entry.outcome is not None:
                    return Result(record, entry.outcome, replayed=True)
                # the same message was being processed when a worker stopped
                resume = Resume(self.repos, cmd.orgId, cmd.requestId, state)
            ledger_id = entry.id
        decided = await self._handlers[cmd.type](cmd, record, resume)
        return Result(record, self._execute_done(cmd, decided), ledger=ledger_id,
                      from_earned_badge=isinstance(decided, Accepted) and decided.from_earned_badge)

    def _reused(self, record: InputRecord, cmd: Command, first_origin: str) -> Result:
        rejection = reject(ErrorCode.REQUEST_ID_REUSED, firstUsedBy=first_origin)
        return Result(record, envelope(cmd.type.value, cmd.orgId, cmd.requestId, None, rejection))

    @staticmethod
    def _execute_done(cmd: Command, decided: Accepted | Rejection) -> Doc:
        if isinstance(decided, Rejection):
            return envelope(cmd.type.value, cmd.orgId, cmd.requestId, None, decided)
        # the event rides with the outcome: stored, cached and replayed with it (domain/events.py)
        return events.attach(envelope(cmd.type.value, cmd.orgId, cmd.requestId, decided.data), decided.event)

    # ------------------------------------------------------------------ commands
    async def _claim(self, cmd: Command, record: InputRecord, resume: Resume | None) -> Accepted | Rejection:
        badge = await self.repos.get_badge(cmd.orgId, cmd.badgeMetaId)  # claims read fresh
        plan = rules.decide_claim(cmd, badge)
        if isinstance(plan, Rejection):
            return plan
        if plan.changes:
            claim = Claim(ownerType=plan.owner.ownerType.value, referenceId=plan.owner.referenceId,
                          isActive=plan.active)
            await self.repos.set_claim(cmd.orgId, cmd.badgeMetaId, claim)
            self.badges.forget(cmd.orgId, cmd.badgeMetaId)
        return Accepted({"badgeMetaId": cmd.badgeMetaId, "ownerType": plan.owner.ownerType.value,
                         "referenceId": plan.owner.referenceId})

    async def _issue(self, cmd: Command, record: InputRecord, resume: Resume | None) -> Accepted | Rejection:
        now = record.now
        assert cmd.requestId is not None and cmd.customerId is not None
        if resume:
            done = await resume.issue()
            if done is not None:
                return self._issued(cmd, done, now)
        badge = await self.badges.get(cmd.orgId, cmd.badgeMetaId)
        issues = await self.repos.active_issues(cmd.orgId, cmd.customerId, cmd.badgeMetaId)
        plan = rules.decide_issue(cmd, badge, issues, now)
        if isinstance(plan, Rejection):
            return plan
        doc = await self.repos.insert_issue(cmd.orgId, cmd.requestId, {
            "_id": ObjectId(), "customerId": cmd.customerId, "badgeMetaId": cmd.badgeMetaId,
            "issuedOn": plan.event_ts, "expiresOn": plan.expires_on, "createdAt": now,
            "triggeredBy": _owner_doc(cmd),
        })
        return self._issued(cmd, doc, now)

    @staticmethod
    def _issued(cmd: Command, doc: Doc, now: float) -> Accepted:
        """From the stored issue, so that a resumed command answers the same."""
        assert cmd.requestId is not None and cmd.customerId is not None
        data = {"badgeMetaId": cmd.badgeMetaId, "customerId": cmd.customerId, "issuedId": str(doc["_id"]),
                "requestId": cmd.requestId, "expiresOn": doc.get("expiresOn"),
                "expiresOnISO": iso(doc.get("expiresOn"))}
        event = events.badge_issued(cmd.orgId, cmd.requestId, now, customer_id=cmd.customerId,
                                    badge_id=cmd.badgeMetaId, issual_id=str(doc["_id"]), issued_on=doc["issuedOn"],
                                    expires_on=doc.get("expiresOn"), triggered_by=doc.get("triggeredBy"))
        return Accepted(data, event)

    async def _earn(self, cmd: Command, record: InputRecord, resume: Resume | None) -> Accepted | Rejection:
        now = record.now
        assert cmd.requestId is not None and cmd.customerId is not None
        if resume:
            done = await resume.earned()
            if done is not None:  # earned before a crash (perhaps revoked since): same answer
                return self._earned(cmd, done, now)
        badge = await self.badges.get(cmd.orgId, cmd.badgeMetaId)
        issues: list[rules.IssueRecord] = []
        if badge is not None and badge.earnType.value == "ISSUE_EARN":
            issues = await self.repos.active_issues(cmd.orgId, cmd.customerId, cmd.badgeMetaId)
        plan = rules.decide_earn(cmd, badge, issues, now)
        if isinstance(plan, Rejection):
            if resume:  # decided otherwise before a crash: give back what it may hold
                intent = await resume.intent()
                if intent is not None:
                    await self._abandon_earn(cmd, intent)
            return plan
        assert badge is not None
        body = _earn_body(cmd, badge, plan, now, record.origin)
        counts: tuple[int, ...] = ()
        if plan.checks:  # an earn with no limit takes nothing: no intent needed
            intent = (await resume.intent() if resume else None) or \
                await self.repos.insert_intent(cmd.orgId, cmd.requestId, body)
            body = {k: v for k, v in intent.items() if k not in ("orgId", "requestId", "status")}
            if resume and await resume.was_rejected():  # rejected before a crash: decide again
                await self.repos.reopen_intent(intent["_id"])
            result = await self._reserve(cmd, plan)
            if result.status == "FULL":
                # Nothing is held: reserve.lua gave back a provisional hold itself. A full release
                # here could give back a hold a newer owner of this partition has just taken;
                # only what a rebuild restored since the refusal is given back.
                await self.repos.reject_intent(intent)
                await self._release_restored([(cmd.orgId, cmd.badgeMetaId, cmd.requestId, result.seq)])
                check = plan.checks[result.index]
                return rules.limit_rejection(check, LimitUsage(result.count, result.blocking_event))
            counts = result.counts
        # kept with the earned badge: a resume after a crash rebuilds the same event from it
        body["earnConstraints"] = events.earn_constraints(plan.checks, counts)
        doc = await self.repos.insert_earned(cmd.orgId, cmd.requestId, body)
        return self._earned(cmd, doc, now)

    # ------------------------------------------------------------------ fresh earns, staged
    @staticmethod
    def _stageable(item: Command | Undecodable, claim: RequestClaim | None, entry: LedgerEntry | None) -> bool:
        """An earn this batch registered first in the ledger (no resume, no requestId to
        correct): what handle() would pass straight to _earn with nothing to resume."""
        return (isinstance(item, Command) and item.type is CommandType.EARN and entry is not None and entry.new
                and claim is not None and claim.first_origin is None and not claim.resuming
                and item.customerId is not None)

    async def _earn_staged(self, items: Sequence[tuple[InputRecord, Command, LedgerEntry]],
                           context: Callable[[int], tuple[RequestClaim | None, ResumeState | None]]
                           ) -> list[Result]:
        """_earn for many fresh earns of different entities at once, stage by stage: decide
        each; insert every intent in one write; take every earn's limits in one pipeline (in
        order); insert every earned badge and rejection marker in one write. The same effects
        and outcomes as _earn, without a coroutine per earn awaiting each step (~30% of the
        worker's samples were that chain). An earn that leaves the common path (a rebuild, a
        cold window, a duplicate, an error) goes on alone from where it is, or runs again
        through handle() (every step is idempotent per requestId); `context(n)` gives the
        n-th item's requestId claim and resume state for that."""
        try:
            return await self._earn_stages(items, context)
        except Exception as exc:
            if is_infra_error(exc):
                raise
            # A bug, or input the stages did not foresee: never a stuck partition. Each earn
            # goes through handle() on its own, which retries it and gives it its own 500.
            log.warning("staged_earns_failed", error=type(exc).__name__, reason=str(exc)[:300], earns=len(items))
            return await _all_or_none([self._handle_with_retries(record, cmd, *context(n), entry=entry)
                                       for n, (record, cmd, entry) in enumerate(items)])

    async def _earn_stages(self, items: Sequence[tuple[InputRecord, Command, LedgerEntry]],
                           context: Callable[[int], tuple[RequestClaim | None, ResumeState | None]]
                           ) -> list[Result]:
        done: dict[int, Doc] = {}
        again: list[int] = []  # run through handle() from the start
        badges: dict[tuple[int, str], BadgeDefinition | None] = {}
        for _, cmd, _ in items:
            key = (cmd.orgId, cmd.badgeMetaId)
            if key not in badges:
                badges[key] = await self.badges.get(*key)
        # 1. decide
        taking: list[tuple[int, rules.EarnPlan, Doc]] = []  # earns with limits: intent, then reserve
        earning: list[tuple[int, rules.EarnPlan, Doc, tuple[int, ...]]] = []
        for n, (record, cmd, _) in enumerate(items):
            badge = badges[(cmd.orgId, cmd.badgeMetaId)]
            if badge is not None and badge.earnType.value == "ISSUE_EARN":
                again.append(n)  # reads its issues
                continue
            try:
                plan = rules.decide_earn(cmd, badge, [], record.now)
                if isinstance(plan, Rejection):
                    done[n] = envelope(cmd.type.value, cmd.orgId, cmd.requestId, None, plan)
                    continue
                assert badge is not None
                body = _earn_body(cmd, badge, plan, record.now, record.origin)
            except Exception:
                again.append(n)
                continue
            if plan.checks:
                taking.append((n, plan, body))
            else:
                earning.append((n, plan, body, ()))
        # 2. the intents
        if taking:
            errors = await self.repos.insert_intents([(items[n][1].orgId, items[n][1].requestId, body)  # type: ignore[misc]
                                                      for n, _, body in taking])
            _raise_infra(errors)
            again += [n for (n, _, _), e in zip(taking, errors, strict=True) if e is not None]
            taking = [t for t, e in zip(taking, errors, strict=True) if e is None]
        # 3. the limits, every earn's in one pipeline
        rejecting: list[tuple[int, Doc, int]] = []  # (item, intent body, seq of the refusal)
        if taking:
            for org, badge_id in dict.fromkeys((items[n][1].orgId, items[n][1].badgeMetaId) for n, _, _ in taking):
                await counters.know_badge(self.store, self.repos, org, badge_id)
            reserved = await self.store.reserve_many([
                (items[n][1].orgId, items[n][1].badgeMetaId, items[n][1].requestId, plan.event_ts, plan.checks,  # type: ignore[misc]
                 None) for n, plan, _ in taking])
            _raise_infra(reserved)
            alone: list[tuple[int, rules.EarnPlan, Doc]] = []
            for (n, plan, body), result in zip(taking, reserved, strict=True):
                if isinstance(result, Exception) and not isinstance(result, NeedsRebuild):
                    again.append(n)
                elif isinstance(result, NeedsRebuild) or result.status not in ("OK", "FULL"):
                    alone.append((n, plan, body))  # took nothing: _reserve rebuilds or asks MongoDB
                elif result.status == "OK":
                    earning.append((n, plan, body, result.counts))
                else:
                    rejecting.append((n, body, result.seq))
                    check = plan.checks[result.index]
                    done[n] = envelope(EARN, items[n][1].orgId, items[n][1].requestId, None,
                                       rules.limit_rejection(check, LimitUsage(result.count, result.blocking_event)))
            if alone and rejecting:
                # The pipeline's refusals are final: mark them before the slower path, whose
                # rebuild or cold decision would count their intents as still pending (held).
                await self._mark_rejected(items, rejecting, done, again)
                rejecting = []
            if alone:
                retried = await asyncio.gather(*(self._reserve(items[n][1], plan) for n, plan, _ in alone),
                                               return_exceptions=True)
                _raise_infra(retried)
                for (n, plan, body), again_result in zip(alone, retried, strict=True):
                    if isinstance(again_result, BaseException):
                        again.append(n)
                    elif again_result.status == "FULL":
                        rejecting.append((n, body, again_result.seq))
                        check = plan.checks[again_result.index]
                        done[n] = envelope(EARN, items[n][1].orgId, items[n][1].requestId, None,
                                           rules.limit_rejection(check, LimitUsage(again_result.count,
                                                                                   again_result.blocking_event)))
                    else:
                        earning.append((n, plan, body, again_result.counts))
            for org, badge_id in dict.fromkeys((items[n][1].orgId, items[n][1].badgeMetaId) for n, _, _ in taking):
                await counters.mark_badge(self.store, self.repos, org, badge_id)
        # 4. the earned badges and rejection markers, in one write
        for _, plan, body, counts in earning:
            body["earnConstraints"] = events.earn_constraints(plan.checks, counts)
        stored, _ = await asyncio.gather(
            self.repos.insert_earned_many([(items[n][1].orgId, items[n][1].requestId, body)  # type: ignore[misc]
                                           for n, _, body, _ in earning]),
            self._mark_rejected(items, rejecting, done, again))
        _raise_infra(stored)
        earned: set[int] = set()
        for (n, _, body, _), error in zip(earning, stored, strict=True):
            if error is None:
                cmd, now = items[n][1], items[n][0].now
                done[n] = self._execute_done(cmd, self._earned(cmd, body, now))
                earned.add(n)
            else:
                again.append(n)  # a duplicate: insert_earned answers with the one stored first
        # 5. the earns that left the common path, through handle() (idempotent)
        if again:
            redone = await _all_or_none([self._handle_with_retries(items[n][0], items[n][1], *context(n),
                                                                   entry=items[n][2]) for n in again])
            results = dict(zip(again, redone, strict=True))
        else:
            results = {}
        for n, outcome in done.items():
            results[n] = Result(items[n][0], outcome, ledger=items[n][2].id, from_earned_badge=n in earned)
        return [results[n] for n in range(len(items))]

    async def _mark_rejected(self, items: Sequence[tuple[InputRecord, Command, LedgerEntry]],
                             rejecting: Sequence[tuple[int, Doc, int]], done: dict[int, Doc], again: list[int]
                             ) -> None:
        """The rejection markers of refused staged earns, in one write; an earn whose marker
        did not get written loses its outcome and runs again through handle()."""
        if not rejecting:
            return
        errors = await self.repos.reject_intents([
            {**body, "orgId": items[n][1].orgId, "requestId": items[n][1].requestId} for n, body, _ in rejecting])
        _raise_infra(errors)
        marked: list[tuple[int, str, str, int]] = []
        for (n, _, seq), error in zip(rejecting, errors, strict=True):
            if error is not None:
                done.pop(n)
                again.append(n)
            else:
                marked.append((items[n][1].orgId, items[n][1].badgeMetaId, items[n][1].requestId, seq))  # type: ignore[arg-type]
        await self._release_restored(marked)

    async def _release_restored(self, refused: Sequence[tuple[int, str, str, int]]) -> None:
        """Refused earns (org, badge, requestId, seq of the refusal) whose rejection markers are
        written: a rebuild that read MongoDB between a refusal and its marker counted the earn
        as pending (a provisional reservation nobody would confirm or give back: a customer
        refused 830 while holding nothing, seen in a CHAOS_LONG run). Where the badge's
        generation moved on since the refusal, give back what such a rebuild restored."""
        by_badge: dict[tuple[int, str], list[tuple[str, int]]] = {}
        for org, badge_id, request_id, seq in refused:
            by_badge.setdefault((org, badge_id), []).append((request_id, seq))
        for (org, badge_id), earns in by_badge.items():
            state = await self.store.badge_state(org, badge_id)
            current = int(state["seq"]) // K.SEQ_GENERATION if state and state.get("seq", "").isdigit() else None
            for request_id, seq in earns:
                if current == seq // K.SEQ_GENERATION:
                    continue  # no rebuild since the refusal: nothing was restored
                for _ in range(5):
                    try:
                        await self.store.release_restored(org, badge_id, request_id)
                        break
                    except NeedsRebuild as exc:  # the next rebuild reads the marker: then nothing is restored
                        await self.rebuild(org, badge_id, exc.why)
                else:
                    raise InfrastructureUnavailable("badge counters could not be rebuilt")

    async def _reserve(self, cmd: Command, plan: rules.EarnPlan) -> Any:
        """Check and take the earn's limits in Redis (reserve.lua). Rebuild the badge's counters
        from MongoDB first when Redis does not hold trusted ones; decide checks whose window
        is past the retention horizon from MongoDB (docs/counters.md)."""
        assert cmd.requestId is not None
        org, badge = cmd.orgId, cmd.badgeMetaId
        await counters.know_badge(self.store, self.repos, org, badge)
        for _ in range(5):
            try:
                result = await self.store.reserve(org, badge, cmd.requestId, plan.event_ts, plan.checks)
                if result.status == "STALE":
                    result = await counters.reserve_cold(self.store, self.repos, org, badge, cmd.requestId,
                                                         plan.event_ts, plan.checks, result)
            except NeedsRebuild as exc:
                await self.rebuild(org, badge, exc.why)
                continue
            await counters.mark_badge(self.store, self.repos, org, badge)
            return result
        raise InfrastructureUnavailable("badge counters could not be rebuilt")

    async def rebuild(self, org: int, badge_id: str, why: str = "asked") -> None:
        """Rebuild a badge's counters from MongoDB (when Redis does not hold trusted ones);
        concurrent callers of this process share one rebuild (logged once, by the first),
        other processes wait for it."""
        key = (org, badge_id)
        running = self._rebuilds.get(key)
        if running is None:
            log.info("counters_need_rebuild", orgId=org, badgeMetaId=badge_id, why=why)
            running = asyncio.ensure_future(self._rebuild(org, badge_id))
            self._rebuilds[key] = running
            running.add_done_callback(lambda _: self._rebuilds.pop(key, None))
        await asyncio.shield(running)

    async def _rebuild(self, org: int, badge_id: str) -> None:
        result = await counters.rebuild_badge(self.store, self.repos, org, badge_id)
        log.info("counters_rebuilt", orgId=org, badgeMetaId=badge_id, applied=result.applied, earns=result.earns,
                 chunks=result.chunks, generation=result.generation)

    async def _abandon_earn(self, cmd: Command, intent: Doc) -> None:
        await self.repos.reject_intent(intent)
        # Holds something only if a rebuild restored this PENDING earn provisionally, or it was
        # taken before a crash and is now rejected: its reservation says what.
        await self._release(cmd.orgId, cmd.badgeMetaId, intent["requestId"], stored=False)

    async def _release(self, org: int, badge_id: str, earn_request_id: str, *, stored: bool = True,
                       limits: Sequence[CounterRef] | None = None) -> None:
        """Give back an earn's counts once MongoDB no longer counts it (REJECTED/REVOKED), once.

        Its reservation says what it took; when that has expired (a revokeEarn long after the
        earn) and `stored`, the earned badge's stored `limits` do (counts still live only). If
        the counters are gone, rebuild them (the rebuild leaves this earn out and marks it
        released) and release again: another worker's rebuild from an older snapshot may still
        have counted it."""
        await counters.know_badge(self.store, self.repos, org, badge_id)
        given = limits
        limits = None
        for _ in range(5):
            try:
                outcome = await self.store.release(org, badge_id, earn_request_id, limits)
            except NeedsRebuild:
                await self.rebuild(org, badge_id)
                continue
            if outcome == "NONE" and stored and limits is None:
                # the earned badge's stored counters, read here only if the caller had none
                limits = given if given is not None else await self.repos.earned_limits(org, earn_request_id)
                if limits:
                    continue
            await counters.mark_badge(self.store, self.repos, org, badge_id)
            return
        raise InfrastructureUnavailable("badge counters could not be rebuilt")

    @staticmethod
    def _earned(cmd: Command, doc: Doc, now: float) -> Accepted:
        """From the stored earned badge (the one written first, if two runs overlapped), so
        that a resumed command answers the same. An earned badge stored before events existed
        has no `earnConstraints`: its event names none."""
        assert cmd.requestId is not None and cmd.customerId is not None
        data = {"badgeMetaId": cmd.badgeMetaId, "customerId": cmd.customerId,
                "earnedBadgeId": str(doc["_id"]), "issuedId": doc.get("issuedId"), "requestId": cmd.requestId,
                "expiresOn": doc.get("expiresOn"), "expiresOnISO": iso(doc.get("expiresOn"))}
        event = events.badge_earned(cmd.orgId, cmd.requestId, now, customer_id=cmd.customerId,
                                    badge_id=cmd.badgeMetaId, earn_id=str(doc["_id"]),
                                    earned_on=doc.get("earnedOn") or doc["eventDate"], event_date=doc["eventDate"],
                                    issued_id=doc.get("issuedId"), expires_on=doc.get("expiresOn"),
                                    triggered_by=doc.get("triggeredBy"),
                                    constraints=doc.get("earnConstraints") or [])
        return Accepted(data, event, from_earned_badge=True)

    async def _revoke_issue(self, cmd: Command, record: InputRecord, resume: Resume | None) -> Accepted | Rejection:
        now = record.now
        assert cmd.requestId is not None and cmd.customerId is not None
        if resume:
            done = await resume.revoked_issue_ids()
            if done:
                return self._revoked_issues(cmd, done, now)
        badge = await self.badges.get(cmd.orgId, cmd.badgeMetaId)
        issues = await self.repos.active_issues(cmd.orgId, cmd.customerId, cmd.badgeMetaId)
        plan = rules.decide_revoke_issue(cmd, badge, issues)
        if isinstance(plan, Rejection):
            return plan
        await self.repos.revoke_issues(cmd.orgId, plan.issued_ids, cmd.requestId)
        return self._revoked_issues(cmd, list(plan.issued_ids), now)

    @staticmethod
    def _revoked_issues(cmd: Command, issued_ids: list[str], now: float) -> Accepted:
        assert cmd.requestId is not None and cmd.customerId is not None
        data = {"badgeMetaId": cmd.badgeMetaId, "customerId": cmd.customerId, "requestId": cmd.requestId,
                "revokedIssuedIds": issued_ids}
        event = events.badge_issue_revoked(cmd.orgId, cmd.requestId, now, customer_id=cmd.customerId,
                                           badge_id=cmd.badgeMetaId, issual_ids=issued_ids)
        return Accepted(data, event)

    async def _revoke_earn(self, cmd: Command, record: InputRecord, resume: Resume | None) -> Accepted | Rejection:
        now = record.now
        assert cmd.requestId is not None and cmd.earnedBadgeId is not None and cmd.customerId is not None
        badge = await self.badges.get(cmd.orgId, cmd.badgeMetaId)
        found = await self.repos.get_earned(cmd.orgId, cmd.earnedBadgeId)
        earned, doc = found if found is not None else (None, None)
        if not (resume and doc is not None and doc.get("revokedBy") == cmd.requestId):
            plan = rules.decide_revoke_earn(cmd, badge, earned)
            if isinstance(plan, Rejection):
                return plan
            assert doc is not None
            await self.repos.revoke_earned(doc["_id"], cmd.requestId)
        assert doc is not None
        # Marked REVOKED first, so a rebuild that runs now already leaves it out.
        await self._release(cmd.orgId, cmd.badgeMetaId, doc["requestId"], limits=counter_refs(doc))
        data = {"badgeMetaId": cmd.badgeMetaId, "customerId": cmd.customerId,
                "earnedBadgeId": str(doc["_id"]), "requestId": cmd.requestId}
        event = events.badge_earn_revoked(cmd.orgId, cmd.requestId, now, customer_id=cmd.customerId,
                                          badge_id=cmd.badgeMetaId, earn_id=str(doc["_id"]))
        return Accepted(data, event)


EARN = CommandType.EARN.value


async def _all_or_none(calls: Sequence[Coroutine[Any, Any, Result]]) -> list[Result]:
    """Every call's result, in order; when one raises (an outage), the others are cancelled
    and awaited before it propagates, so none runs on beside the batch's retry. The same
    on our own cancellation (a revoke)."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        pending = [t for t in tasks if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    failed = next((t for t in tasks if not t.cancelled() and t.exception() is not None), None)
    if failed is not None:
        raise failed.exception()  # type: ignore[misc]  # the first real error, not a sibling's cancel
    return [t.result() for t in tasks]


def _raise_infra(outcomes: Sequence[object]) -> None:
    """An outage seen by any item fails the whole batch (retried with backoff), as in _earn."""
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and is_infra_error(outcome):
            raise outcome


def _earn_body(cmd: Command, badge: BadgeDefinition, plan: rules.EarnPlan, now: float, origin: str) -> Doc:
    """The earned badge an earn is about to write (its intent first, when it takes limits);
    `origin`: its message's, whose block a restart reads it by."""
    return {
        "_id": ObjectId(), "customerId": cmd.customerId, "badgeMetaId": cmd.badgeMetaId,
        "badgeGroupId": badge.badgeGroupId, "eventDate": plan.event_ts, "earnedOn": now,
        "expiresOn": plan.expires_on, "issuedId": plan.issued_id, "triggeredBy": _owner_doc(cmd),
        # objects, not pairs: FerretDB does not store nested arrays
        # each counter once, with when it stops mattering (docs/counters.md)
        "limits": limit_docs(plan.checks),
        K.ORIGIN_BLOCK_FIELD: origin_block(origin),
    }


def _owner_doc(cmd: Command) -> Doc | None:
    if cmd.owner is None:
        return None
    return {"ownerType": cmd.owner.ownerType.value, "referenceId": cmd.owner.referenceId}
