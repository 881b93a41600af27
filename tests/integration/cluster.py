"""The local cluster stack for fault tests: 3 Kafka KRaft nodes + a 6-node Redis Cluster
(deploy/local/cluster, docs/cluster.md).

`cluster_settings` (session fixture) brings the stack up and yields Settings for it; a test
gives them its own names (`with_unique_names`). The functions below kill and restart real
nodes (SIGKILL, no graceful shutdown) and wait for the cluster to heal; each one that
restarts a node leaves the cluster healthy for the next test.

Kafka nodes are named by node.id (1, 2, 3), Redis nodes by port.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from badge_worker.adapters.kafka_io import client_options
from badge_worker.settings import Settings

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "deploy" / "local" / "stack"
CLUSTER_SCRIPT = REPO / "deploy" / "local" / "cluster"
CLUSTER_DIR = Path(os.environ.get("STACK_DIR", REPO / ".stack")) / "cluster"
KAFKA_PORTS = [int(p) for p in os.environ.get("KAFKA_CLUSTER_PORTS", "9192 9193 9194").split()]
REDIS_PORTS = [int(p) for p in os.environ.get("REDIS_CLUSTER_PORTS", "7000 7001 7002 7003 7004 7005").split()]
SLOTS = 16384


def bootstrap() -> str:
    return ",".join(f"127.0.0.1:{p}" for p in KAFKA_PORTS)


@pytest.fixture(scope="session")
def cluster_settings() -> Settings:
    """Settings for the cluster stack (the single stack's MongoDB, or MONGODB_URI)."""
    subprocess.run([str(STACK), "up", "--cluster"], check=True)
    mongodb = os.environ.get("MONGODB_URI")
    if not mongodb:
        subprocess.run([str(STACK), "up"], check=True)
        mongodb = f"mongodb://127.0.0.1:{os.environ.get('MONGO_PORT', '27017')}"
    return Settings(kafka_bootstrap_servers=bootstrap(), redis_url=f"redis://127.0.0.1:{REDIS_PORTS[0]}/0",
                   redis_cluster=True, mongodb_uri=mongodb,
                   topic_replication_factor=3, topic_min_insync_replicas=2)


def with_unique_names(settings: Settings, **overrides: object) -> Settings:
    """The settings with this test's own topics, group, key prefix and database (as
    tests/conftest.py gives the single stack's tests)."""
    tag = uuid.uuid4().hex[:10]
    names: dict[str, object] = dict(
        mongodb_database=f"t_{tag}", consumer_group=f"g-{tag}",
        topic_claims=f"t{tag}.claims", topic_earns=f"t{tag}.earns", topic_results=f"t{tag}.results",
        topic_errors=f"t{tag}.errors", topic_dlq=f"t{tag}.dlq", topic_events=f"t{tag}.events",
        redis_key_prefix=f"bw{tag}", topic_partitions=4, http_port=0)
    return settings.model_copy(update={**names, **overrides})


def _pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _sigkill(pidfile: Path) -> None:
    pid = _pid(pidfile)
    assert pid is not None, f"nothing of this stack runs for {pidfile}"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.05)


def _running(pid: int) -> bool:
    try:  # a zombie (not reaped yet) holds no port any more: it counts as gone
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


async def _script(*args: str, timeout: float = 180) -> None:
    proc = await asyncio.create_subprocess_exec(str(CLUSTER_SCRIPT), *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, f"deploy/local/cluster {' '.join(args)} failed:\n{out.decode()}"


async def _until(what: str, check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.2) -> float:
    """Seconds until `check()` holds; fails the test after `timeout`. Errors of a cluster in
    transition (a node going down or coming up) count as "not yet"."""
    start = time.monotonic()
    last: Exception | None = None
    while True:
        try:
            if await check():
                return time.monotonic() - start
        except AssertionError:
            raise
        except Exception as exc:
            last = exc
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout}s (last error: {last!r})")
        await asyncio.sleep(interval)


# ---------------------------------------------------------------- Kafka


def kafka_pidfile(node_id: int) -> Path:
    return CLUSTER_DIR / f"kafka-{node_id}" / "kafka.pid"


def kill_broker(node_id: int) -> None:
    """SIGKILL Kafka node `node_id` (broker and controller: one of the three voters)."""
    _sigkill(kafka_pidfile(node_id))


async def _admin() -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(**client_options(Settings(kafka_bootstrap_servers=bootstrap())),
                                request_timeout_ms=5000)
    await admin.start()
    return admin


async def partitions(topics: list[str] | None = None) -> list[dict[str, object]]:
    """Every partition of `topics` (all topics when None): topic, partition, leader, replicas, isr."""
    admin = await _admin()
    try:
        names = topics if topics is not None else list(await admin.list_topics())
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    return [{"topic": t["topic"], "partition": p["partition"], "leader": p["leader"],
             "replicas": list(p["replicas"]), "isr": list(p["isr"])}
            for t in described for p in t["partitions"]]


async def partition_leaders(topics: list[str] | None = None) -> dict[int, list[tuple[str, int]]]:
    """Node id → the (topic, partition)s it leads, from the admin metadata (-1: no leader)."""
    leaders: dict[int, list[tuple[str, int]]] = {}
    for p in await partitions(topics):
        leaders.setdefault(int(p["leader"]), []).append((str(p["topic"]), int(p["partition"])))  # type: ignore[call-overload]
    return leaders


async def leader_of(topic: str, partition: int, timeout: float = 30) -> int:
    """The node leading (topic, partition), waiting for it: a topic just created may not be
    in the metadata yet, or its partition have no leader yet."""
    found: list[int] = []

    async def known() -> bool:
        found[:] = [n for n, tps in (await partition_leaders([topic])).items() if (topic, partition) in tps and n >= 0]
        return bool(found)
    await _until(f"a leader for {topic}/{partition}", known, timeout, 0.2)
    return found[0]


async def brokers_registered() -> set[int]:
    admin = await _admin()
    try:
        return {int(b["node_id"]) for b in (await admin.describe_cluster())["brokers"]}
    finally:
        await admin.close()


async def wait_broker_gone(node_id: int, timeout: float = 30) -> float:
    """Seconds until no partition names `node_id` as leader or in its ISR (it was fenced)."""
    async def gone() -> bool:
        return all(p["leader"] != node_id and node_id not in p["isr"] for p in await partitions())  # type: ignore[operator]
    return await _until(f"kafka node {node_id} fenced", gone, timeout, 0.5)


async def start_broker(node_id: int, *, wait_isr: bool = True, timeout: float = 120) -> None:
    """Start Kafka node `node_id` again, wait until it serves and, with `wait_isr`, until it
    is back in the ISR of every partition (the cluster is as healthy as before the kill)."""
    await _script("start-broker", str(node_id), timeout=timeout)
    async def registered() -> bool:
        return node_id in await brokers_registered()
    await _until(f"kafka node {node_id} registered", registered, timeout)
    if wait_isr:
        await _until("every partition fully in sync", fully_replicated, timeout, 0.5)


async def fully_replicated() -> bool:
    return all(len(p["isr"]) == len(p["replicas"]) and p["leader"] != -1 for p in await partitions())  # type: ignore[arg-type]


# ---------------------------------------------------------------- Redis Cluster


@dataclass
class RedisNode:
    port: int
    node_id: str
    role: str  # "master" | "replica"
    master_id: str | None
    connected: bool
    failed: bool
    slots: list[tuple[int, int]] = field(default_factory=list)

    @property
    def slot_count(self) -> int:
        return sum(b - a + 1 for a, b in self.slots)


def _client(port: int) -> Redis:
    return Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=3, socket_connect_timeout=2)


def _command(client: Redis) -> Callable[..., Awaitable[Any]]:
    run: Callable[..., Awaitable[Any]] = client.execute_command  # redis-py leaves it untyped
    return run


async def _on(port: int, *args: str | int) -> str:
    client = _client(port)
    try:
        reply = await _command(client)(*args)
    finally:
        await client.aclose()
    return reply if isinstance(reply, str) else str(reply)


def _parse_nodes(text: str) -> list[RedisNode]:
    nodes = []
    for line in text.strip().splitlines():
        node_id, addr, flags, master, _ping, _pong, _epoch, link, *slots = line.split()
        flag_set = set(flags.split(","))
        ranges = []
        for s in slots:
            if s.startswith("["):  # a slot being migrated or imported, not owned
                continue
            a, _, b = s.partition("-")
            ranges.append((int(a), int(b or a)))
        nodes.append(RedisNode(port=int(addr.split("@")[0].rsplit(":", 1)[1]), node_id=node_id,
                               role="master" if "master" in flag_set else "replica",
                               master_id=None if master == "-" else master, connected=link == "connected",
                               failed=bool(flag_set & {"fail", "fail?"}), slots=ranges))
    return sorted(nodes, key=lambda n: n.port)


def _live_ports() -> list[int]:
    return [p for p in REDIS_PORTS if _pid(redis_pidfile(p)) is not None]


async def redis_nodes(seen_from: int | None = None) -> list[RedisNode]:
    """The cluster as one live node sees it (CLUSTER NODES): role, master, slots of each."""
    ports = [seen_from] if seen_from else _live_ports()
    last: Exception | None = None
    for port in ports:
        try:
            return _parse_nodes(await _on(port, "CLUSTER", "NODES"))
        except Exception as exc:  # that node is going down: ask another
            last = exc
    raise AssertionError(f"no Redis node answered CLUSTER NODES: {last}")


async def cluster_ok() -> bool:
    """Every node says cluster_state:ok, 3 connected masters cover the 16384 slots and each
    has one replica, as every node sees it."""
    views = []
    for port in REDIS_PORTS:
        try:
            info = await _on(port, "CLUSTER", "INFO")
            if "cluster_state:ok" not in info:
                return False
            views.append(_parse_nodes(await _on(port, "CLUSTER", "NODES")))
        except Exception:
            return False
    for nodes in views:
        masters = [n for n in nodes if n.role == "master" and n.connected and not n.failed]
        replicas = [n for n in nodes if n.role == "replica" and n.connected and not n.failed]
        if len(masters) != 3 or len(replicas) != 3 or sum(m.slot_count for m in masters) != SLOTS:
            return False
        if sorted(r.master_id or "" for r in replicas) != sorted(m.node_id for m in masters):
            return False
    return True


async def wait_cluster_ok(timeout: float = 60) -> float:
    return await _until("redis cluster ok", cluster_ok, timeout, 0.3)


def redis_pidfile(port: int) -> Path:
    return CLUSTER_DIR / f"redis-{port}" / "redis.pid"


def kill_redis(port: int) -> None:
    """SIGKILL the Redis node on `port`."""
    _sigkill(redis_pidfile(port))


async def wait_failover(dead_port: int, timeout: float = 30, before_kill: list[Any] | None = None
                        ) -> tuple[int, float]:
    """After the master on `dead_port` died: (port of the replica promoted in its place,
    seconds it took) once that replica serves all the dead master's slots and the live
    nodes say cluster_state:ok. `before_kill`: redis_nodes() taken before the kill (read after
    it, a fast failover may already have taken the dead node's slots away)."""
    before = {n.port: n for n in (before_kill if before_kill is not None else await redis_nodes())}
    dead = before[dead_port]
    assert dead.role == "master" and dead.slots, f"{dead_port} was no master with slots"
    result: dict[str, int] = {}

    async def promoted() -> bool:
        for port in _live_ports():
            if "cluster_state:ok" not in await _on(port, "CLUSTER", "INFO"):
                return False
        nodes = await redis_nodes()
        owners = [n for n in nodes if n.port != dead_port and n.role == "master" and n.slots == dead.slots]
        if owners:
            result["port"] = owners[0].port
        return bool(owners)

    seconds = await _until(f"failover of {dead_port}", promoted, timeout, 0.1)
    return result["port"], seconds


async def start_redis(port: int, *, promote: bool = False, timeout: float = 60) -> None:
    """Start the Redis node on `port` again and wait until it rejoined as a replica in sync
    with its master and the whole cluster is ok; with `promote`, then make it master again
    (CLUSTER FAILOVER on it) so the roles are those of before the kill."""
    await _script("start-redis", str(port), timeout=timeout)

    async def synced_replica() -> bool:
        role = await _client_role(port)
        return role[0] == "slave" and role[3] == "connected"
    await _until(f"redis {port} back as a replica", synced_replica, timeout)
    await wait_cluster_ok(timeout)
    if promote:
        await promote_redis(port, timeout=timeout)


async def _client_role(port: int) -> list[object]:
    client = _client(port)
    try:
        return list(await _command(client)("ROLE"))
    finally:
        await client.aclose()


async def promote_redis(port: int, timeout: float = 60) -> None:
    """Make the replica on `port` its master's master (a manual, lossless CLUSTER FAILOVER)."""
    await _on(port, "CLUSTER", "FAILOVER")

    async def is_master() -> bool:
        return (await _client_role(port))[0] == "master"
    await _until(f"redis {port} promoted", is_master, timeout)
    await wait_cluster_ok(timeout)


async def slot_of(key: str) -> int:
    return int(await _on(_live_ports()[0], "CLUSTER", "KEYSLOT", key))


async def owner_of(key: str) -> RedisNode:
    slot = await slot_of(key)
    return next(n for n in await redis_nodes() if n.role == "master" and any(a <= slot <= b for a, b in n.slots))


async def reshard(slot_or_key: int | str, to_port: int, batch: int = 100) -> int:
    """Move one slot (given, or the slot of a key) with its keys to the master on `to_port`,
    as the Redis Cluster spec does it: IMPORTING on the target, MIGRATING on the source, MIGRATE
    the keys, then SETSLOT NODE on every master. Returns the slot."""
    slot = slot_or_key if isinstance(slot_or_key, int) else await slot_of(slot_or_key)
    nodes = await redis_nodes()
    masters = [n for n in nodes if n.role == "master" and not n.failed]
    source = next(n for n in masters if any(a <= slot <= b for a, b in n.slots))
    target = next(n for n in masters if n.port == to_port)
    if source.port == target.port:
        return slot
    await _on(target.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
    await _on(source.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
    client = _client(source.port)
    try:
        while keys := await _command(client)("CLUSTER", "GETKEYSINSLOT", slot, batch):
            await _command(client)("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
    finally:
        await client.aclose()
    # the target first, so that it owns the slot before the source sends clients there
    for node in [target, source, *[m for m in masters if m.port not in (source.port, target.port)]]:
        await _on(node.port, "CLUSTER", "SETSLOT", slot, "NODE", target.node_id)

    async def agreed() -> bool:
        for port in _live_ports():
            owner = next((n for n in await redis_nodes(port) if any(a <= slot <= b for a, b in n.slots)), None)
            if owner is None or owner.port != target.port:
                return False
        return True
    await _until(f"slot {slot} owned by {to_port} on every node", agreed, 30)
    return slot
