"""Chaos: two worker processes on a private stack, while the test SIGKILLs workers, flushes
Redis, restarts Redis empty, restarts FerretDB and restarts the Kafka broker, all in the
middle of a stream of more than 20,000 commands (earns on badges with tight limits,
requestIds used twice, revokes of accepted earns and earns again after them).

Then, read with read_committed: every command has exactly one outcome, none is a 500,
nothing went to the DLQ, no limit is exceeded in MongoDB (per customer lifetime, per badge
and day, per rolling window) and none is left unused, the customer-cap badge's outcomes are
exactly what a sequential run gives, and MongoDB's ACTIVE earned badges are exactly the
accepted earns minus the revoked ones.

CHAOS_LONG=1 runs a longer variant (more commands, more kills, a longer time limit);
CHAOS_NO_FAULTS=1 runs the same stream without any fault, to measure the plain rate;
CHAOS_SCALE=0.25 (say) scales the stream down and CHAOS_BACKLOG=500 (say) keeps fewer
commands in flight (1,500 by default), for a quicker run while debugging.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import AIOKafkaConsumer
from pymongo import AsyncMongoClient

from badge_worker.adapters.kafka_io import partitions_of
from badge_worker.adapters.mongo import Repositories
from badge_worker.client import Collector, Coord, Outcome, Publisher
from badge_worker.settings import Settings
from tests.conftest import WorkerProcess
from tests.integration.helpers import DAY, ORG, live_badge

if TYPE_CHECKING:
    from tests.integration.private_servers import PrivateServers, PrivateStack

pytestmark = [pytest.mark.slow, pytest.mark.chaos]
pytest_plugins = ["tests.integration.private_servers"]

LONG = os.environ.get("CHAOS_LONG") == "1"
NO_FAULTS = os.environ.get("CHAOS_NO_FAULTS") == "1"
SCALE = float(os.environ.get("CHAOS_SCALE", "1"))
BACKLOG = int(os.environ.get("CHAOS_BACKLOG", "1500"))  # commands published and not yet answered


A_CAP, A_TRIES = 2, 3
B_DAILY, C_ROLLING = 120, 100


@dataclass(frozen=True)
class Plan:
    a_customers: int  # badge A: customer lifetime cap A_CAP, A_TRIES earns each
    b_days: int  # badge B: customer lifetime cap 1 + a badge daily fixed window of B_DAILY
    b_per_day: int
    c_days: int  # badge C: a rolling window of one day, C_ROLLING earns in it
    c_per_day: int
    duplicates: int  # bodies sent a second time (same requestId): 809
    revokes: int  # badge A customers whose first accepted earn is revoked, then who earn again
    kills: int  # SIGKILLs of a worker process
    time_limit: float  # seconds for the whole test

    def scaled(self, factor: float) -> Plan:
        """A smaller (or larger) stream; the daily and rolling limits are still overrun each day."""
        if factor == 1:
            return self
        return Plan(a_customers=int(self.a_customers * factor),
                    b_days=max(2, round(self.b_days * factor)), b_per_day=max(B_DAILY * 3 // 2, self.b_per_day),
                    c_days=max(2, round(self.c_days * factor)), c_per_day=max(C_ROLLING * 3 // 2, self.c_per_day),
                    duplicates=int(self.duplicates * factor), revokes=int(self.revokes * factor), kills=self.kills,
                    time_limit=self.time_limit)


PLAN = (Plan(a_customers=19_000, b_days=20, b_per_day=1_000, c_days=20, c_per_day=800, duplicates=6_000,
             revokes=2_000, kills=12, time_limit=3_000) if LONG else
        Plan(a_customers=4_000, b_days=10, b_per_day=300, c_days=10, c_per_day=250, duplicates=1_500,
             revokes=500, kills=5, time_limit=570)).scaled(SCALE)


# ---------------------------------------------------------------- the commands


@dataclass
class Sent:
    """What the test knows of one published command."""

    kind: str  # earn | dup | revoke
    badge: str
    customer: int
    body: dict[str, Any]
    day: int | None = None


@dataclass
class Ledger:
    sent: dict[Coord, Sent] = field(default_factory=dict)
    order: list[Coord] = field(default_factory=list)

    def add(self, coords: list[Coord], items: list[Sent]) -> None:
        for coord, item in zip(coords, items, strict=True):
            self.sent[coord] = item
            self.order.append(coord)


def badges(base: float) -> list[Any]:
    return [
        live_badge("chaos-a", customerConstraints=[
            {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": A_CAP}]),
        live_badge("chaos-b", startOn=base - DAY, customerConstraints=[
            {"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 1}], badgeConstraints=[
            {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "refreshRate": 1,
             "maxEarnLimit": B_DAILY, "startDate": base}]),
        live_badge("chaos-c", startOn=base - DAY, badgeConstraints=[
            {"constraintType": "BADGE_ROLLING_WINDOW", "rollType": "DAYS", "rollValue": 1,
             "maxEarnLimit": C_ROLLING}]),
    ]


def first_stream(plan: Plan, base: float, rng: random.Random) -> list[Sent]:
    """Badges A, B and C interleaved, then duplicates of earlier bodies among them."""
    a = [Sent("earn", "chaos-a", 100_000 + c,
              {"orgId": ORG, "requestId": f"a-{c}-{k}", "badgeMetaId": "chaos-a", "customerId": 100_000 + c})
         for k in range(A_TRIES) for c in range(plan.a_customers)]
    b_customers = plan.b_days * plan.b_per_day // 2  # each tries on two different days
    b = []
    for day in range(plan.b_days):
        for n in range(plan.b_per_day):
            customer = 500_000 + (day * plan.b_per_day + n) % b_customers
            when = base + day * DAY + 60 + rng.random() * (DAY - 120)  # never on a window edge
            b.append(Sent("earn", "chaos-b", customer,
                          {"orgId": ORG, "requestId": f"b-{day}-{n}", "badgeMetaId": "chaos-b",
                           "customerId": customer, "earnEventDate": when}, day))
    # one instant per day: the one-day window that ends at an earn holds exactly that day's earns
    c = [Sent("earn", "chaos-c", 800_000 + day * plan.c_per_day + n,
              {"orgId": ORG, "requestId": f"c-{day}-{n}", "badgeMetaId": "chaos-c",
               "customerId": 800_000 + day * plan.c_per_day + n, "earnEventDate": base + day * DAY + 3_600}, day)
         for day in range(plan.c_days) for n in range(plan.c_per_day)]
    rng.shuffle(b)
    rng.shuffle(c)
    merged: list[Sent] = []
    sources = [a, b, c]
    cursors = [0, 0, 0]
    while any(cursors[i] < len(sources[i]) for i in range(3)):
        for i, source in enumerate(sources):
            take = max(1, len(source) // 100)
            merged += source[cursors[i] : cursors[i] + take]
            cursors[i] += take
    # the same bodies again, each well after its first copy
    stream: list[Sent] = []
    dup_of = set(rng.sample(range(len(merged) // 2), plan.duplicates))
    pending: list[Sent] = []
    for i, item in enumerate(merged):
        stream.append(item)
        if i in dup_of:
            pending.append(Sent("dup", item.badge, item.customer, item.body, item.day))
        if pending and rng.random() < 0.5:
            stream.append(pending.pop(0))
    return stream + pending


# ---------------------------------------------------------------- the chaos


@dataclass
class Chaos:
    stack: PrivateStack
    settings: Settings
    logs: Path
    workers: list[WorkerProcess]
    all_workers: list[WorkerProcess]
    events: list[str] = field(default_factory=list)
    kills: int = 0
    restarts: Counter[str] = field(default_factory=Counter)

    def start_worker(self, slot: int) -> None:
        # One static group member per slot (as a StatefulSet's pods): a restarted worker takes
        # its slot's partitions back at once.
        settings = self.settings.model_copy(update={"group_instance_id": f"{self.settings.consumer_group}-w{slot}"})
        worker = WorkerProcess(settings, self.logs / f"worker{slot}.log").start()
        self.all_workers.append(worker)
        if slot < len(self.workers):
            self.workers[slot] = worker
        else:
            self.workers.append(worker)

    def kill_worker(self, slot: int) -> None:
        self.workers[slot].kill()
        self.kills += 1
        self.start_worker(slot)

    async def flushall(self) -> None:
        await asyncio.to_thread(self.stack.redis.client().flushall)

    async def restart(self, name: str) -> None:
        server = {"redis": self.stack.redis, "ferretdb": self.stack.ferretdb, "kafka": self.stack.kafka}[name]
        await server.arestart(kill=True, down_for=1.0)
        self.restarts[name] += 1

    def dump_tasks(self) -> None:
        """Make every live worker log where its tasks wait (kill -USR1), for the report."""
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.proc.pid, signal.SIGUSR1)
        time.sleep(1.5)

    def log_tails(self, chars: int = 6000) -> str:
        parts = []
        for path in sorted(self.logs.glob("worker*.log")):
            text = path.read_text(errors="replace")
            parts.append(f"==== {path.name} (last {chars} chars)\n{text[-chars:]}")
        return "\n".join(parts)


def schedule(plan: Plan, total: int) -> list[tuple[int, str]]:
    """(outcomes seen, action): kills spread over the stream, one of each server event."""
    if NO_FAULTS:
        return []
    events = [(0.22, "flushall"), (0.40, "restart:redis"), (0.58, "restart:ferretdb"), (0.74, "restart:kafka")]
    for n in range(plan.kills):
        events.append((0.08 + 0.80 * n / max(1, plan.kills - 1) + 0.013, f"kill:{n % 2}"))
    return sorted((int(total * at), action) for at, action in events)


# ---------------------------------------------------------------- checks


def expected_a_codes(ledger: Ledger, seen: dict[Coord, Outcome]) -> dict[Coord, int]:
    """Badge A has only a per-customer cap, and a customer's commands share a partition, so
    its outcomes are exactly those of a sequential run in offset order."""
    per_customer: dict[int, list[Coord]] = defaultdict(list)
    for coord, item in ledger.sent.items():
        if item.badge == "chaos-a":
            per_customer[item.customer].append(coord)
    expected: dict[Coord, int] = {}
    for coords in per_customer.values():
        held: set[str] = set()
        for coord in sorted(coords, key=lambda c: (c[1], c[2])):
            item = ledger.sent[coord]
            if item.kind == "dup":
                expected[coord] = 809
            elif item.kind == "revoke":
                target = item.body["earnedBadgeId"]
                expected[coord] = 200 if target in held else 404
                held.discard(target)
            elif len(held) < A_CAP:
                expected[coord] = 200
                if seen[coord].code == 200:
                    held.add(seen[coord].body["data"]["earnedBadgeId"])
            else:
                expected[coord] = 830
    return expected


async def read_dlq(settings: Settings) -> int:
    tps = await partitions_of(settings, [settings.topic_dlq])
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                isolation_level="read_committed", enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        count = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                break
            count += sum(len(b) for b in (await consumer.getmany(timeout_ms=500)).values())
        return count
    finally:
        await consumer.stop()


def windows_ok(docs: list[dict[str, Any]], base: float) -> list[str]:
    """Limit overruns in MongoDB's ACTIVE earned badges (empty: none)."""
    problems = []
    by_badge: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in docs:
        by_badge[d["badgeMetaId"]].append(d)
    for badge, cap in (("chaos-a", A_CAP), ("chaos-b", 1)):
        over = {c: n for c, n in Counter(d["customerId"] for d in by_badge[badge]).items() if n > cap}
        if over:
            problems.append(f"{badge}: {len(over)} customers over their lifetime cap {cap}: {list(over.items())[:5]}")
    days = Counter(int((d["eventDate"] - base) // DAY) for d in by_badge["chaos-b"])
    if days and max(days.values()) > B_DAILY:
        problems.append(f"chaos-b: a day over {B_DAILY}: {sorted(days.items())}")
    dates = sorted(d["eventDate"] for d in by_badge["chaos-c"])
    worst = max((sum(1 for x in dates if e - DAY < x <= e) for e in set(dates)), default=0)
    if worst > C_ROLLING:
        problems.append(f"chaos-c: a one-day rolling window holds {worst} > {C_ROLLING}")
    return problems


def unused_limits(ledger: Ledger, seen: dict[Coord, Outcome], docs: list[dict[str, Any]], base: float) -> list[str]:
    """A limit rejection is only right if the limit is really reached (no revokes on B, C)."""
    problems = []
    active = defaultdict(list)
    for d in docs:
        active[d["badgeMetaId"]].append(d)
    b_days = Counter(int((d["eventDate"] - base) // DAY) for d in active["chaos-b"])
    b_customers = Counter(d["customerId"] for d in active["chaos-b"])
    c_days = Counter(int((d["eventDate"] - base) // DAY) for d in active["chaos-c"])
    for coord, item in ledger.sent.items():
        code = seen[coord].code
        if item.kind != "earn" or code not in (830, 831):
            continue
        if item.badge == "chaos-b" and code == 831 and b_days[item.day or 0] < B_DAILY:
            problems.append(f"831 on chaos-b day {item.day} holding {b_days[item.day or 0]} < {B_DAILY}")
        if item.badge == "chaos-b" and code == 830 and b_customers[item.customer] < 1:
            problems.append(f"830 on chaos-b for customer {item.customer} holding none")
        if item.badge == "chaos-c" and code == 831 and c_days[item.day or 0] < C_ROLLING:
            problems.append(f"831 on chaos-c day {item.day} holding {c_days[item.day or 0]} < {C_ROLLING}")
    return problems


# ---------------------------------------------------------------- the test


def _chaos_settings(base: Settings) -> dict[str, Any]:
    """Short group sessions, if this worker has the knobs: a killed worker's partitions move on sooner."""
    wanted = {"topic_partitions": 8, "session_timeout_ms": 6_000, "heartbeat_interval_ms": 1_000,
              "backoff_max_s": 2.0}
    return {k: v for k, v in wanted.items() if k in type(base).model_fields}


@pytest.fixture
def chaos_stack(private_servers: PrivateServers) -> PrivateStack:
    stack = private_servers.stack()
    stack.settings = stack.settings.model_copy(update=_chaos_settings(stack.settings))
    return stack


async def test_chaos_exactly_once_and_limits_hold(
        chaos_stack: PrivateStack, worker_processes: list[WorkerProcess], tmp_path: Path) -> None:
    plan, s = PLAN, chaos_stack.settings
    rng = random.Random(7)
    base = time.time() - (max(plan.b_days, plan.c_days) + 2) * DAY
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(s.mongodb_uri, serverSelectionTimeoutMS=30_000)
    repos = Repositories(client[s.mongodb_database])
    await repos.ensure_indexes()
    for badge in badges(base):
        await repos.upsert_badge(badge)
    first = first_stream(plan, base, rng)
    total = len(first) + 2 * plan.revokes
    if SCALE == 1:
        assert total >= (100_000 if LONG else 20_000)
    chaos = Chaos(chaos_stack, s, tmp_path, [], worker_processes)
    ledger = Ledger()
    started = time.monotonic()
    revoke_for = set(rng.sample(range(plan.a_customers), plan.revokes))
    try:
        async with Collector(s) as collector, Publisher(s) as pub:
            for slot in range(2):
                chaos.start_worker(slot)
            await asyncio.wait_for(run_stream(plan, s, chaos, ledger, collector, pub, first, revoke_for, total),
                                   plan.time_limit - (time.monotonic() - started))
            seen = await collector.wait_for(ledger.order, 60)
            settle_until = time.monotonic() + 4
            while time.monotonic() < settle_until:
                await collector.poll(300)
        elapsed = time.monotonic() - started
        dlq = await read_dlq(s)
        docs = await repos.earned.find({"status": "ACTIVE"}).to_list()
        pending = await repos.earned.count_documents({"status": "PENDING"})
    except BaseException:
        chaos.dump_tasks()
        print(chaos.log_tails())
        print("chaos events:", chaos.events)
        raise
    finally:
        await client.close()

    # ---- exactly one outcome each
    counts = Counter(o.input for o in collector.outcomes)
    missing = [c for c in ledger.order if counts[c] == 0]
    duplicated = [c for c in ledger.order if counts[c] > 1]
    codes = Counter(seen[c].code for c in ledger.order)
    by_kind = {kind: dict(Counter(seen[c].code for c in ledger.order if ledger.sent[c].kind == kind))
               for kind in ("earn", "dup", "revoke")}
    print(f"chaos summary: commands={len(ledger.order)} outcomes={dict(sorted(codes.items()))} by_kind={by_kind} "
          f"kills={chaos.kills} restarts={dict(chaos.restarts)} flushall={int(not NO_FAULTS)} dlq={dlq} "
          f"seconds={elapsed:.0f} rate={len(ledger.order) / elapsed:.0f}/s events={chaos.events}")
    assert len(ledger.order) == total
    assert not missing and not duplicated, f"{len(missing)} missing, {len(duplicated)} duplicated outcomes"
    assert codes[500] == 0, [seen[c].body for c in ledger.order if seen[c].code == 500][:3]
    assert dlq == 0
    if not NO_FAULTS:
        assert chaos.kills == plan.kills and sum(chaos.restarts.values()) == 3
    # ---- limits: none exceeded, none left unused, badge A exactly as a sequential run
    assert windows_ok(docs, base) == []
    assert unused_limits(ledger, seen, docs, base) == []
    expected = expected_a_codes(ledger, seen)
    wrong = [(ledger.sent[c].body.get("requestId"), expected[c], seen[c].code) for c in expected
             if expected[c] != seen[c].code]
    assert not wrong, f"{len(wrong)} chaos-a outcomes differ from a sequential run: {wrong[:10]}"
    assert all(seen[c].code == 809 for c in ledger.order if ledger.sent[c].kind == "dup")
    # ---- MongoDB holds exactly the accepted earns that were not revoked
    accepted = {seen[c].body["data"]["earnedBadgeId"] for c in ledger.order
                if ledger.sent[c].kind == "earn" and seen[c].code == 200}
    revoked = {seen[c].body["data"]["earnedBadgeId"] for c in ledger.order
               if ledger.sent[c].kind == "revoke" and seen[c].code == 200}
    assert revoked <= accepted
    assert {str(d["_id"]) for d in docs} == accepted - revoked
    assert pending == 0


async def run_stream(plan: Plan, s: Settings, chaos: Chaos, ledger: Ledger, collector: Collector, pub: Publisher,
                     first: list[Sent], revoke_for: set[int], total: int) -> None:
    """Publish with a bounded backlog, revoke as accepted earns come in, and run the chaos
    schedule as outcomes pass its marks; until every command has its outcome."""
    events = schedule(plan, total)
    examined = 0
    queued: list[Sent] = []  # revokes and earns-again, waiting to be published
    cursor = 0
    revoked_customers: set[int] = set()
    last_progress, last_count = time.monotonic(), 0
    started = last_report = time.monotonic()

    async def publish(items: list[Sent]) -> None:
        coords = await pub.send_many(s.topic_earns, [i.body for i in items])
        ledger.add(coords, items)

    while True:
        await collector.poll(200)
        outcomes = collector.outcomes
        # revokes: the first accepted earn of a chosen badge A customer, then an earn again
        while examined < len(outcomes):
            o = outcomes[examined]
            item = ledger.sent.get(o.input)
            if item is None:
                break  # its coordinates are not known yet (still being published)
            examined += 1
            customer = item.customer - 100_000
            if (item.badge == "chaos-a" and item.kind == "earn" and o.code == 200 and customer in revoke_for
                    and customer not in revoked_customers):
                revoked_customers.add(customer)
                queued.append(Sent("revoke", "chaos-a", item.customer, {
                    "orgId": ORG, "type": "revokeEarn", "requestId": f"rv-{customer}", "badgeMetaId": "chaos-a",
                    "customerId": item.customer, "earnedBadgeId": o.body["data"]["earnedBadgeId"]}))
                queued.append(Sent("earn", "chaos-a", item.customer, {
                    "orgId": ORG, "requestId": f"again-{customer}", "badgeMetaId": "chaos-a",
                    "customerId": item.customer}))
        backlog = len(ledger.order) - len(outcomes)
        if backlog < BACKLOG and (cursor < len(first) or queued):
            size = min(1000, max(100, BACKLOG // 3))
            extra, queued = queued[:size], queued[size:]
            fresh = first[cursor : cursor + size - len(extra)]
            cursor += len(fresh)
            await publish(extra + fresh)
        # the chaos schedule
        while events and len(outcomes) >= events[0][0]:
            _, action = events.pop(0)
            chaos.events.append(f"{action}@{len(outcomes)}")
            if action.startswith("kill:"):
                chaos.kill_worker(int(action.split(":")[1]))
            elif action == "flushall":
                await chaos.flushall()
            else:
                await chaos.restart(action.split(":")[1])
        if time.monotonic() - last_report >= 15:
            last_report = time.monotonic()
            elapsed = last_report - started
            print(f"chaos progress: {elapsed:.0f}s published={len(ledger.order)} outcomes={len(outcomes)} "
                  f"({len(outcomes) / elapsed:.0f}/s) codes={dict(Counter(o.code for o in outcomes))} "
                  f"events={chaos.events}", flush=True)
        if len(outcomes) > last_count:
            last_progress, last_count = time.monotonic(), len(outcomes)
        elif time.monotonic() - last_progress > 120:
            raise AssertionError(f"no outcome for 120 s at {len(outcomes)} of {total}")
        done = cursor >= len(first) and not queued and len(ledger.order) == total
        if done and len(collector.count_by_input()) >= total:
            return
