"""Zombies and restarts: a frozen worker that wakes up after its partitions were taken over,
and a restarted worker with static group membership."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from badge_worker.adapters.mongo import Repositories
from badge_worker.client import Collector, Publisher
from badge_worker.settings import Settings
from tests.conftest import WorkerProcess
from tests.integration.helpers import ORG, live_badge, load

pytestmark = pytest.mark.slow


def earn(rid: str, customer: int, badge: str) -> dict[str, object]:
    return {"orgId": ORG, "requestId": rid, "badgeMetaId": badge, "customerId": customer}


async def settle(collector: Collector, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await collector.poll(300)


async def test_a_frozen_worker_woken_after_a_takeover_adds_no_outcome_and_no_earn(
        topics: Settings, mongo: Repositories, worker_processes: list[WorkerProcess], tmp_path: Path) -> None:
    """SIGSTOP one of two workers past its session timeout; the other takes its partitions
    over and fences its producers; SIGCONT: the zombie's batch in hand must neither publish
    nor take a limit, and it rejoins the group as a normal member."""
    s = topics.model_copy(update={"session_timeout_ms": 6_000, "heartbeat_interval_ms": 1_000,
                                  "rebalance_timeout_ms": 10_000})
    cap, customers = 300, 400
    await load(mongo, live_badge("zombie-b",
                                 customerConstraints=[{"constraintType": "CUSTOMER_BADGE_FIXED_VALUE",
                                                       "maxEarnLimit": 2}],
                                 badgeConstraints=[{"constraintType": "BADGE_FIXED_VALUE", "maxEarnLimit": cap}]))
    zombie_log = tmp_path / "zombie.log"
    zombie = WorkerProcess(s, zombie_log).start()
    other = WorkerProcess(s, tmp_path / "other.log").start()
    worker_processes += [zombie, other]
    bodies = [earn(f"z{n}", 20_000 + n % customers, "zombie-b") for n in range(1_600)]
    async with Collector(s) as collector, Publisher(s) as pub:
        await asyncio.sleep(6)  # both in the group
        first = await pub.send_many(s.topic_earns, bodies[:400])
        await collector.wait_for(first[:50], 90)  # the stream is flowing
        os.kill(zombie.pid, signal.SIGSTOP)
        rest = asyncio.create_task(pub.send_many(s.topic_earns, bodies[400:]))
        await asyncio.sleep(s.session_timeout_ms / 1000 + 6)  # expelled; `other` owns everything
        woke_at = zombie_log.stat().st_size
        os.kill(zombie.pid, signal.SIGCONT)
        coords = first + await rest
        seen = await collector.wait_for(coords, 240)
        await settle(collector, 6)
    assert zombie.proc is not None and zombie.proc.poll() is None, "the zombie crashed"
    counts = collector.count_by_input()
    assert Counter(counts[c] for c in coords) == Counter({1: len(coords)}), "an input with no or several outcomes"
    codes = Counter(seen[c].code for c in coords)
    assert codes[200] == cap and codes[200] + codes[830] + codes[831] == len(coords), codes
    accepted = {seen[c].body["data"]["earnedBadgeId"] for c in coords if seen[c].code == 200}
    active = await mongo.earned.find({"badgeMetaId": "zombie-b", "status": "ACTIVE"}, {"_id": 1}).to_list()
    assert {str(d["_id"]) for d in active} == accepted
    per_customer = Counter(d["customerId"] for d in
                           await mongo.earned.find({"badgeMetaId": "zombie-b", "status": "ACTIVE"}).to_list())
    assert max(per_customer.values()) <= 2
    after_waking = zombie_log.read_bytes()[woke_at:].decode()
    events = Counter(e.split('"')[0] for e in after_waking.split('"event": "')[1:])
    print("zombie after waking:", dict(events))
    assert events["partitions_revoked"] >= 1, "the zombie did not learn that it lost its partitions"


async def test_a_restarted_static_member_gets_its_partitions_back_before_the_session_expires(
        topics: Settings, mongo: Repositories, worker_processes: list[WorkerProcess], tmp_path: Path) -> None:
    """With GROUP_INSTANCE_ID the broker hands a restarted worker its old assignment at once;
    without it the group would wait out the dead member's session (30 s here)."""
    session_s = 30
    s = topics.model_copy(update={"group_instance_id": f"{topics.consumer_group}-0",
                                  "session_timeout_ms": session_s * 1000})
    await load(mongo, live_badge("static-b"))
    log = tmp_path / "worker.log"
    async with Collector(s) as collector, Publisher(s) as pub:
        worker_processes.append(WorkerProcess(s, log).start())
        warm = await pub.send_many(s.topic_earns, [earn(f"s{n}", 30_000 + n, "static-b") for n in range(200)])
        await collector.wait_for(warm, 90)
        worker_processes[-1].kill()
        backlog = await pub.send_many(s.topic_earns,
                                      [earn(f"s{n}", 30_000 + n, "static-b") for n in range(200, 1200)])
        restarted_at = time.time()
        worker_processes.append(WorkerProcess(s, log).start())
        seen = await collector.wait_for(backlog, 120)
        first = min(o.received_at for o in seen.values())
        await settle(collector, 2)
    waited = first - restarted_at
    assert waited < session_s - 5, f"first outcome {waited:.1f} s after the restart"
    assert Counter(collector.count_by_input()[c] for c in warm + backlog) == Counter({1: 1200})
