"""Everything the worker's performance targets name, measured in one run, printed as one table.

    .venv/bin/python bench/run.py            # the full run (~10 min on the local stack)
    .venv/bin/python bench/run.py --quick    # smaller figures, a smoke run (~3 min)

Every phase runs on fresh topics, consumer group, database and Redis prefix, against the
servers of the environment (the local stack by default). The worker runs as its own OS
process (`python -m badge_worker.cli run`), so its CPU and RSS are its own; CPU of Kafka,
Redis and FerretDB is read from /proc for their pids in .stack/run (local stack only).

Phases:
  ceiling      bare transactional consume->produce of the same records: N earn-shaped
               records on 8 partitions, batches of up to 2,000, one transactional producer
               per input partition, the outputs and offsets of a partition batch in one
               transaction, no work. What Kafka and aiokafka allow on this machine.
  accept       the worker, full rules (a per-customer lifetime cap, a daily badge fixed
               window, a weekly rolling window), limits wide enough that every earn is accepted.
  reject       the same rules, tight: 3 earns per customer against a lifetime cap of 1, and
               a daily badge cap, so most earns are refused (830/831).
  2 workers    accept, with two worker processes sharing the partitions.
  naive        accept, one record per fetch and one entity at a time: a transaction per earn.
  restart      accept; the worker is SIGKILLed after a third of the outcomes and started again
               (static membership); the redelivered remainder's drain rate.
  1M stored    accept, on a database already holding N_STORED earned badges (and as many
               requestId ledger entries) of other customers.
  latency      the worker running, earns offered at a fixed rate; produce->outcome p50/p99.
Earns are published while the worker is already running and warm; a drain's time runs from
the first send to the last outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the worker is measured without spans (the dev install has the otel extra; no collector here)
os.environ.setdefault("OTEL_SDK_DISABLED", "true")

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from bson import ObjectId
from pymongo import AsyncMongoClient

from badge_worker.adapters.kafka_io import client_options, ensure_topics, partitions_of
from badge_worker.adapters.mongo import Repositories
from badge_worker.adapters.redis_client import connect as redis_connect
from badge_worker.client import Collector, Coord, Outcome, Publisher
from badge_worker.domain.models import BadgeDefinition
from badge_worker.settings import Settings

ORG = 100458
DAY = 86_400.0
ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("kafka", "redis", "ferretdb", "postgres")  # postgres: FerretDB's backend, every process of it
TICK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ processes
def cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """utime + stime (threads included); `reaped`: plus the CPU of its exited children."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    own = int(fields[11]) + int(fields[12])
    return (own + int(fields[13]) + int(fields[14]) if reaped else own) / TICK


ALL_POSTGRES = -1  # the "pid" of PostgreSQL: its CPU is the sum over all its processes


def postgres_seconds() -> float:
    total = 0.0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == "postgres":
                    # with the reaped children: a backend that exits (a killed worker's
                    # connections) moves its CPU to the postmaster's instead of out of the sum
                    total += cpu_seconds(int(proc.name), reaped=True)
            except OSError:
                continue
    return total


def cpu_of(pid: int) -> float:
    return postgres_seconds() if pid == ALL_POSTGRES else cpu_seconds(pid)


def peak_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def server_pids() -> dict[str, int]:
    pids = {}
    run = Path(os.environ.get("STACK_DIR", ROOT / ".stack")) / "run"
    for name in SERVERS:
        try:
            pids[name] = int((run / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            continue
    if "postgres" in pids:
        pids["postgres"] = ALL_POSTGRES
    return pids


@dataclass
class CpuMeter:
    pids: dict[str, int]
    start: dict[str, float] = field(default_factory=dict)

    def begin(self) -> None:
        self.start = {name: cpu_of(pid) for name, pid in self.pids.items()}

    def used(self) -> dict[str, float]:
        return {name: cpu_of(pid) - self.start.get(name, 0.0) for name, pid in self.pids.items()}


def fresh(base: Settings, **overrides: object) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return base.model_copy(update={
        "mongodb_database": f"bench_{tag}", "consumer_group": f"bench-{tag}", "topic_claims": f"b{tag}.claims",
        "topic_earns": f"b{tag}.earns", "topic_results": f"b{tag}.results", "topic_errors": f"b{tag}.errors",
        "topic_dlq": f"b{tag}.dlq", "topic_events": f"b{tag}.events", "redis_key_prefix": f"bench{tag}",
        "http_port": 0, "log_level": os.environ.get("BENCH_LOG_LEVEL", "WARNING"), **overrides})


PROFILE: Path | None = None  # --profile: py-spy samples each worker into this folder


def start_worker(s: Settings, instance: str, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    for name, value in s.model_dump().items():
        if value is not None:
            env[name.upper()] = str(value)
    env["GROUP_INSTANCE_ID"] = instance
    if os.environ.get("BENCH_WORKER_SRC"):  # bench/ab.py: the worker runs another revision's code
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ["BENCH_WORKER_SRC"], env.get("PYTHONPATH")]))
    out = log.open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "badge_worker.cli", "run"], env=env, stdout=out, stderr=out)
    if PROFILE is not None:
        PROFILE.mkdir(parents=True, exist_ok=True)
        # py-spy is installed next to this interpreter (the venv), which need not be on PATH
        spy = Path(sys.executable).with_name("py-spy")
        subprocess.Popen([str(spy) if spy.exists() else "py-spy", "record", "-r", "100", "--format", "raw",
                          "--pid", str(proc.pid),
                          "-o", str(PROFILE / f"{instance}-{proc.pid}.txt")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc


# ------------------------------------------------------------------ workloads
def badge(name: str, *, customer_cap: int, daily_cap: int, weekly_cap: int) -> BadgeDefinition:
    now = time.time()
    return BadgeDefinition.model_validate({
        "id": name, "orgId": ORG, "startOn": now - DAY, "expiresOn": now + 365 * DAY, "active": True,
        "earnedBadgeExpiry": {"expiryType": "RELATIVE", "relativeExpirytype": "DAYS", "value": 30},
        "customerConstraints": [{"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": customer_cap}],
        "badgeConstraints": [
            {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "refreshRate": 1,
             "maxEarnLimit": daily_cap},
            {"constraintType": "BADGE_ROLLING_WINDOW", "rollType": "WEEKS", "rollValue": 1,
             "maxEarnLimit": weekly_cap}]})


WIDE = {"customer_cap": 10**6, "daily_cap": 10**9, "weekly_cap": 10**9}


def tight(n: int) -> dict[str, int]:
    # 3 earns per customer against a lifetime cap of 1 refuses 2 in 3; the daily badge cap
    # then refuses part of the first earns too
    return {"customer_cap": 1, "daily_cap": max(1, n // 4), "weekly_cap": 10**9}


def earn_bodies(n: int, tag: str, badge_id: str, per_customer: int = 1, first_customer: int = 1_000_000
                ) -> list[dict[str, Any]]:
    customers = max(1, n // per_customer)
    return [{"orgId": ORG, "requestId": f"{tag}-{i}", "badgeMetaId": badge_id,
             "customerId": first_customer + i % customers} for i in range(n)]


def reuse_bodies(n: int, tag: str, badge_id: str) -> list[dict[str, Any]]:
    """n commands, every 4th a second message with the requestId of an earn sent 200 messages
    before (a producer's retry, answered 809): its first use is decided or still in flight."""
    firsts = earn_bodies(n - n // 4, tag, badge_id)
    bodies: list[dict[str, Any]] = []
    for i, body in enumerate(firsts):
        bodies.append(body)
        if i % 3 == 2 and len(bodies) < n:
            bodies.append(dict(firsts[i - 150 if i >= 150 else i]))
    return bodies[:n]


async def prepare(s: Settings, *badges: BadgeDefinition, stored: int = 0) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(s.mongodb_uri)
    try:
        repos = Repositories(client[s.mongodb_database])
        await repos.ensure_indexes()
        for b in (badge("warm", **WIDE), *badges):
            await repos.upsert_badge(b)
        if stored:
            await fill(repos, stored)
    finally:
        await client.close()


async def fill(repos: Repositories, n: int, chunk: int = 5_000) -> None:
    """`n` earned badges of other customers (and their ledger entries), as the worker writes them."""
    now = time.time()
    for start in range(0, n, chunk):
        earned, ledger = [], []
        for i in range(start, min(n, start + chunk)):
            oid = ObjectId()
            request_id = f"old-{i}"
            earned.append({"_id": oid, "orgId": ORG, "requestId": request_id, "status": "ACTIVE",
                           "customerId": 5_000_000 + i // 10, "badgeMetaId": f"old-{i % 50}", "badgeGroupId": None,
                           "eventDate": now - DAY, "earnedOn": now - DAY, "expiresOn": now + 29 * DAY,
                           "issuedId": None, "triggeredBy": None,
                           "limits": [{"kind": "l", "counter": f"cust:{5_000_000 + i // 10}"}]})
            ledger.append({"_id": ObjectId(), "orgId": ORG, "requestId": request_id, "origin": f"x.earns:0:{i}",
                           "type": "earn", "createdAt": now - DAY})
        await asyncio.gather(repos.earned.insert_many(earned, ordered=False),
                             repos.requests.insert_many(ledger, ordered=False))


# ------------------------------------------------------------------ measurements
@dataclass
class Row:
    name: str
    earns: int
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)  # seconds per process
    rss_mb: float = 0.0
    codes: Counter[int] = field(default_factory=Counter)
    note: str = ""

    @property
    def rate(self) -> float:
        return self.earns / self.seconds if self.seconds > 0 else 0.0

    def cpu_ms(self, name: str) -> float:
        return self.cpu.get(name, 0.0) * 1000 / self.earns if self.earns else 0.0


async def ceiling(base: Settings, n: int) -> Row:
    s = fresh(base)
    await ensure_topics(s)
    async with Publisher(s) as pub:
        await pub.send_many(s.topic_earns, earn_bodies(n, "c", "warm"))
    tps = await partitions_of(s, [s.topic_earns])
    consumer = AIOKafkaConsumer(**client_options(s), group_id=s.consumer_group,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                isolation_level="read_committed", max_partition_fetch_bytes=4 << 20)
    producers = {tp: AIOKafkaProducer(**client_options(s), linger_ms=5,
                                      transactional_id=f"{s.consumer_group}-{tp.partition}") for tp in tps}
    meter = CpuMeter({"bench": os.getpid(), **server_pids()})
    await consumer.start()
    await asyncio.gather(*(p.start() for p in producers.values()))
    consumer.assign(tps)
    done = 0
    began = None

    async def one(tp: TopicPartition, records: list[Any]) -> None:
        producer = producers[tp]
        async with producer.transaction():
            sent = [await producer.send(s.topic_results, r.value, key=r.key) for r in records]
            await asyncio.gather(*sent)
            await producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, s.consumer_group)

    try:
        while done < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=2000)
            if batch and began is None:
                began = time.perf_counter()
                meter.begin()
            await asyncio.gather(*(one(tp, recs) for tp, recs in batch.items()))
            done += sum(len(r) for r in batch.values())
        elapsed = time.perf_counter() - (began or time.perf_counter())
    finally:
        await consumer.stop()
        await asyncio.gather(*(p.stop() for p in producers.values()))
        await cleanup(s)
    used = meter.used()
    return Row("bare ceiling", n, elapsed, {"worker": used.pop("bench"), **used})


async def warm_up(s: Settings, collector: Collector, pub: Publisher, badge_id: str | None = None) -> float:
    """A few earns first (of the drain's badge too, so that its first use, which reads what
    MongoDB holds of it, is not timed): the seconds they took."""
    began = time.time()
    bodies = earn_bodies(200, "warm", "warm", first_customer=9_000_000)
    if badge_id is not None:
        bodies += earn_bodies(50, "warm-d", badge_id, first_customer=9_100_000)
    coords = await pub.send_many(s.topic_earns, bodies)
    await collector.wait_for(coords, 1800)
    return time.time() - began


async def cleanup(s: Settings) -> None:
    """Drop what a phase left: its database, Redis keys and topics. Left behind, 48 runs had
    piled up 8 GB in PostgreSQL and 1.7M keys (1.1 GB) in Redis, whose AOF rewrites then
    forked and wrote that gigabyte again in the middle of later runs."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(s.mongodb_uri)
    try:
        await client.drop_database(s.mongodb_database)
    except Exception as exc:
        print(f"[bench] could not drop {s.mongodb_database}: {exc}", file=sys.stderr)
    finally:
        await client.close()
    redis = redis_connect(s)
    try:
        batch: list[Any] = []
        async for key in redis.scan_iter(match=f"{s.redis_key_prefix}:*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                await redis.unlink(*batch)
                batch = []
        if batch:
            await redis.unlink(*batch)
    except Exception as exc:
        print(f"[bench] could not delete the {s.redis_key_prefix} keys: {exc}", file=sys.stderr)
    finally:
        await redis.aclose()
    admin = AIOKafkaAdminClient(**client_options(s))
    try:
        await admin.start()
        topics = [s.topic_claims, s.topic_earns, s.topic_results, s.topic_errors, s.topic_dlq, s.topic_events]
        await admin.delete_topics([t for t in topics if t in set(await admin.list_topics())])
    except Exception as exc:
        print(f"[bench] could not delete the phase's topics: {exc}", file=sys.stderr)
    finally:
        await admin.close()


async def drain(name: str, base: Settings, bodies: list[dict[str, Any]], *badges: BadgeDefinition,
                processes: int = 1, stored: int = 0, kill_after: float | None = None,
                log: Path, **overrides: object) -> Row:
    """Workers started and warm; `bodies` published; time from the first send to the last outcome.
    `kill_after`: SIGKILL the worker once this share of the outcomes is in, start it again, and
    time only what comes after the restart."""
    s = fresh(base, **overrides)
    await prepare(s, *badges, stored=stored)
    procs = [start_worker(s, f"{s.consumer_group}-{i}", log) for i in range(processes)]
    try:
        async with Collector(s) as collector, Publisher(s) as pub:
            warm_s = await warm_up(s, collector, pub, str(bodies[0]["badgeMetaId"]))
            if processes > 1:
                await asyncio.sleep(4)  # the group settles with every member
            meter = CpuMeter({**{f"worker{i}": p.pid for i, p in enumerate(procs)}, **server_pids()})
            meter.begin()
            began = time.time()
            coords = await pub.send_many(s.topic_earns, bodies)
            n = len(coords)
            if kill_after is None:
                seen = await collector.wait_for(coords, 1800)
                seconds = max(o.received_at for o in seen.values()) - began
                counted = n
            else:
                before = len(collector.outcomes)
                while len(collector.outcomes) - before < n * kill_after:
                    await collector.poll(50)
                procs[0].send_signal(signal.SIGKILL)
                procs[0].wait()
                restarted = time.time()
                done_before = len({o.input for o in collector.outcomes[before:]})
                cpu_before = meter.used()
                procs[0] = start_worker(s, f"{s.consumer_group}-0", log)
                meter.pids["worker0"] = procs[0].pid
                meter.start["worker0"] = 0.0
                for key in SERVERS:
                    if key in meter.start:
                        meter.start[key] += cpu_before.get(key, 0.0)
                seen = await collector.wait_for(coords, 1800)
                seconds = max(o.received_at for o in seen.values()) - restarted
                counted = n - done_before
            used = meter.used()
            rss = max(peak_rss_mb(p.pid) for p in procs)
            codes: Counter[int] = Counter(o.code for o in seen.values())
            if kill_after is not None:
                await asyncio.sleep(3)
                await collector.poll(500)
                per_input = collector.count_by_input()
                twice = sum(1 for c in coords if per_input.get(c, 0) > 1)
                first = min(o.received_at for o in collector.outcomes if o.received_at >= restarted)
                note = (f"{done_before} done before the kill; first outcome {first - restarted:.1f} s "
                        f"after the restart; duplicated outcomes {twice}")
            else:
                note = ""
            if stored:
                note = f"warm-up (first use of the badges: reads over the stored documents) {warm_s:.1f} s"
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        await cleanup(s)
    worker_cpu = sum(v for k, v in used.items() if k.startswith("worker"))
    cpu = {"worker": worker_cpu, **{k: used[k] for k in SERVERS if k in used}}
    return Row(name, counted, seconds, cpu, rss, codes, note)


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float
    earns: int
    cpu: dict[str, float]  # CPU seconds of each process while the earns were offered
    round_trips: dict[str, tuple[float, float]]  # probe name -> (p50, p99) ms, meanwhile

    def cpu_ms(self, name: str) -> float:
        return self.cpu.get(name, 0.0) * 1000 / self.earns if self.earns else 0.0


def start_probe(s: Settings) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(ROOT / "bench" / "probe.py"), s.redis_url, s.mongodb_uri,
                             s.mongodb_database], stdin=subprocess.PIPE, stdout=subprocess.PIPE)


async def latency(base: Settings, rate: float, seconds: float, log: Path) -> Latency:
    s = fresh(base)
    b = badge("lat", **WIDE)
    await prepare(s, b)
    proc = start_worker(s, f"{s.consumer_group}-0", log)
    prober: subprocess.Popen[bytes] | None = None
    try:
        async with Collector(s) as collector, Publisher(s) as pub:
            await warm_up(s, collector, pub)

            async def keep_polling() -> None:  # outcomes are timed as they arrive
                while True:
                    await collector.poll(20)

            poller = asyncio.create_task(keep_polling())
            # round trips measured meanwhile from a process of its own (bench/probe.py)
            prober = start_probe(s)
            meter = CpuMeter({"worker": proc.pid, **server_pids()})
            meter.begin()
            n = int(rate * seconds)
            bodies = earn_bodies(n, "l", "lat")
            coords: list[Coord] = []
            step = 0.01
            per_step = max(1, int(rate * step))
            started = time.perf_counter()
            for i in range(0, n, per_step):
                coords += await pub.send_many(s.topic_earns, bodies[i:i + per_step])
                ahead = started + (i + per_step) / rate - time.perf_counter()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            poller.cancel()
            seen: dict[Coord, Outcome] = await collector.wait_for(coords, 600)
            used = meter.used()
            out, _ = await asyncio.to_thread(prober.communicate, timeout=30)  # stdin closed: it stops
            round_trips = {name: (float(p50), float(p99)) for name, (p50, p99) in json.loads(out).items()}
    finally:
        if prober is not None and prober.poll() is None:  # the phase failed: or it would write on after cleanup
            prober.kill()
            prober.wait(10)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        await cleanup(s)
    lat = sorted((seen[c].received_at - pub.sent_at[c]) * 1000 for c in coords)
    return Latency(statistics.median(lat), lat[min(len(lat) - 1, int(len(lat) * 0.99))], len(lat), used, round_trips)


# ------------------------------------------------------------------ report
def table(rows: list[Row], ceiling_rate: float) -> str:
    head = (f"{'run':<22} {'earns':>7} {'s':>7} {'earns/s':>8} {'%ceil':>6} {'worker':>7} {'kafka':>6} "
            f"{'redis':>6} {'ferret':>6} {'pg':>6} {'RSS MB':>7}  outcomes")
    lines = [head, "-" * len(head), f"{'':<47}{'--- CPU ms per earn ---':^43}"]
    for r in rows:
        codes = " ".join(f"{c}:{k}" for c, k in sorted(r.codes.items()))
        worker = f"{r.cpu_ms('worker'):7.3f}" if "worker" in r.cpu else f"{'-':>7}"
        lines.append(f"{r.name:<22} {r.earns:>7} {r.seconds:>7.2f} {r.rate:>8.0f} {100 * r.rate / ceiling_rate:>5.1f}% "
                     f"{worker} {r.cpu_ms('kafka'):>6.3f} {r.cpu_ms('redis'):>6.3f} {r.cpu_ms('ferretdb'):>6.3f} "
                     f"{r.cpu_ms('postgres'):>6.3f} "
                     f"{r.rss_mb:>7.0f}  {codes}")
        if r.note:
            lines.append(f"{'':<24}{r.note}")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller figures (a smoke run)")
    parser.add_argument("--earns", type=int, help="earns per worker drain (default 20,000; quick 4,000)")
    parser.add_argument("--stored", type=int, help="earned badges stored beforehand (default 1,000,000)")
    parser.add_argument("--rate", type=float, default=1000.0, help="earns/s offered in the latency phase")
    parser.add_argument("--log", type=Path, default=Path("bench-workers.log"), help="the workers' own logs")
    parser.add_argument("--profile", type=Path, help="sample every worker with py-spy into this folder")
    parser.add_argument("--only", nargs="*", help="run these phases only (ceiling accept reject reuse two "
                                                  "naive restart stored latency)")
    args = parser.parse_args()
    global PROFILE
    PROFILE = args.profile
    if PROFILE is not None and not (Path(sys.executable).with_name("py-spy").exists() or shutil.which("py-spy")):
        parser.error("--profile needs py-spy: .venv/bin/pip install py-spy")
    n = args.earns or (4_000 if args.quick else 20_000)
    stored = args.stored if args.stored is not None else (100_000 if args.quick else 1_000_000)
    phases = set(args.only or ["ceiling", "accept", "reject", "reuse", "two", "naive", "restart", "stored",
                               "latency"])
    base = Settings()
    ceiling_rate = float("nan")
    wide = badge("accept", **WIDE)
    say = lambda what: print(f"[bench] {time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)  # noqa: E731

    class Rows(list[Row]):
        def append(self, row: Row) -> None:  # each row as soon as it is measured, too
            super().append(row)
            for line in table([row], ceiling_rate).splitlines()[3:]:
                say(line)

    rows = Rows()
    if "ceiling" in phases:
        say("ceiling")
        row = await ceiling(base, n * 10)
        ceiling_rate = row.rate
        rows.append(row)
    if "accept" in phases:
        say("accept")
        rows.append(await drain("worker accept", base, earn_bodies(n, "a", "accept"), wide, log=args.log))
    if "reject" in phases:
        say("reject")
        rows.append(await drain("worker reject", base, earn_bodies(n, "r", "reject", per_customer=3),
                                badge("reject", **tight(n)), log=args.log))
    if "reuse" in phases:
        say("reuse")
        rows.append(await drain("worker reuse", base, reuse_bodies(n, "u", "accept"), wide, log=args.log))
    if "two" in phases:
        say("two workers")
        rows.append(await drain("2 workers accept", base, earn_bodies(n, "t", "accept"), wide, processes=2,
                                log=args.log))
    if "naive" in phases:
        say("naive")
        rows.append(await drain("naive accept", base, earn_bodies(max(200, n // 20), "n", "accept"), wide,
                                log=args.log, batch_max_records=1, concurrency=1))
    if "restart" in phases:
        say("restart")
        rows.append(await drain("restart after SIGKILL", base, earn_bodies(n, "k", "accept"), wide,
                                kill_after=1 / 3, log=args.log))
    lat = None
    if "latency" in phases:
        say("latency")
        lat = await latency(base, args.rate, 10.0 if not args.quick else 5.0, args.log)
        say(f"latency at {args.rate:.0f}/s: p50 {lat.p50_ms:.0f} ms, p99 {lat.p99_ms:.0f} ms")
    if "stored" in phases:
        say(f"stored ({stored:,} earned badges first)")
        # FerretDB scans every stored document on a badge's first use (no index for finds):
        # at 1M past the driver's 30 s socket timeout and the 120 s batch bound, so the
        # workers wait longer here (the warm-up time in the row says how long)
        rows.append(await drain(f"{stored // 1000}k stored accept", base, earn_bodies(n, "s", "accept"), wide,
                                stored=stored, log=args.log, mongodb_socket_timeout_ms=1_800_000,
                                batch_timeout_s=3600.0))
    print()
    print(table(rows, ceiling_rate))
    by = {r.name: r for r in rows}
    if lat is not None:
        print(f"\nlatency at {args.rate:.0f} earns/s offered ({lat.earns} earns): "
              f"p50 {lat.p50_ms:.0f} ms, p99 {lat.p99_ms:.0f} ms")
        print("  meanwhile, CPU ms per earn: " + ", ".join(f"{name} {lat.cpu_ms(name):.3f}" for name in lat.cpu))
        print("  meanwhile, round trips from a probe (p50 / p99 ms): "
              + ", ".join(f"{name} {p50:.2f} / {p99:.2f}" for name, (p50, p99) in lat.round_trips.items()))
    print("\ntargets:")

    def target(text: str, value: float | None, ok: bool | None) -> None:
        if value is None or ok is None:
            return
        print(f"  {'MET ' if ok else 'MISS'} {text}: {value:.3g}")

    accept = by.get("worker accept")
    if accept:
        target("worker % of the bare ceiling (>= 10)", 100 * accept.rate / ceiling_rate,
               accept.rate >= 0.1 * ceiling_rate)
        target("worker CPU ms per earn (<= 0.3)", accept.cpu_ms("worker"), accept.cpu_ms("worker") <= 0.3)
        target("worker peak RSS MB (<= 150)", accept.rss_mb, accept.rss_mb <= 150)
        if "worker reuse" in by:
            print(f"  reuse-heavy (1 in 4 a reused requestId) / accept-heavy rate: "
                  f"{by['worker reuse'].rate / accept.rate:.2f}x")
        for name, goal, what in (("worker reject", 0.8, "rejection-heavy / accept-heavy rate (>= 0.8)"),
                                 ("restart after SIGKILL", 0.8, "restarted / warm rate (>= 0.8)")):
            if name in by:
                target(what, by[name].rate / accept.rate, by[name].rate >= goal * accept.rate)
        stored_row = next((r for r in rows if r.name.endswith("stored accept")), None)
        if stored_row:
            target("stored / empty store rate (>= 0.8)", stored_row.rate / accept.rate,
                   stored_row.rate >= 0.8 * accept.rate)
        if "2 workers accept" in by:
            print(f"  two worker processes / one: {by['2 workers accept'].rate / accept.rate:.2f}x")
        if "naive accept" in by:
            print(f"  worker / naive: {accept.rate / by['naive accept'].rate:.1f}x")
    if lat is not None:
        target(f"p99 ms at {args.rate:.0f} earns/s (<= 100)", lat.p99_ms, lat.p99_ms <= 100)


if __name__ == "__main__":
    asyncio.run(main())
