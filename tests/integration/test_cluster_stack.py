"""The local cluster stack (deploy/local/cluster, docs/cluster.md) and its fault helpers
(cluster.py): 3 Kafka KRaft nodes with RF 3 topics, a Redis Cluster of 3 masters + 3
replicas. Every test that kills a node restarts it and leaves the cluster healthy."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from badge_worker.adapters import redis_client
from badge_worker.adapters.kafka_io import client_options, ensure_topics, make_transactional_producer
from badge_worker.adapters.redis_store import RedisStore
from badge_worker.settings import Settings
from tests.integration import cluster
from tests.integration.cluster import cluster_settings  # noqa: F401  (the session fixture)
from tests.integration.lua_audit import exercise_every_script

REPO = Path(__file__).resolve().parents[2]
on_cluster = pytest.mark.cluster


def _stack(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(cluster.STACK), *args, "--cluster"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


@on_cluster
def test_stack_is_up_and_prints_its_env(cluster_settings: Settings) -> None:  # noqa: F811
    status = _stack("status").stdout.splitlines()
    kafka = [line for line in status if line.startswith("kafka-")]
    redis = [line for line in status if line.startswith("redis-")]
    assert len(kafka) == 3 and all(" up (pid " in line and "broker+controller" in line for line in kafka), status
    assert [line.split()[-1] for line in redis].count("master") == 3, status
    assert [line.split()[-1] for line in redis].count("replica") == 3, status
    assert any(line.split()[:3] == ["redis", "cluster_state", "ok"] for line in status), status
    env = dict(line.removeprefix("export ").split("=", 1) for line in _stack("env").stdout.splitlines())
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:9192,127.0.0.1:9193,127.0.0.1:9194"
    assert env["REDIS_URL"] == "redis://127.0.0.1:7000/0" and env["REDIS_CLUSTER"] == "true"
    assert (env["TOPIC_REPLICATION_FACTOR"], env["TOPIC_MIN_INSYNC_REPLICAS"]) == ("3", "2")
    assert env["MONGODB_URI"].startswith("mongodb://127.0.0.1:")
    # the settings the worker reads from those lines
    assert Settings.model_validate({k.lower(): v for k, v in env.items()}).redis_cluster is True
    # a second `up` finds every node running and starts or creates nothing
    again = _stack("up").stderr
    assert again.count(": running (pid") == 9 and "starting" not in again and "creating the cluster" not in again


async def _topic_configs(settings: Settings, topics: list[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    finally:
        await admin.close()
    return {name: {e[0]: str(e[1]) for e in entries}
            for r in responses for _code, _msg, _type, name, entries in r.resources}


@on_cluster
async def test_project_topics_have_three_replicas_and_two_in_sync(cluster_settings: Settings) -> None:  # noqa: F811
    names = [*cluster_settings.input_topics(), *cluster_settings.output_topics()]
    found = await cluster.partitions(names)
    assert {p["topic"] for p in found} == set(names), "a project topic is missing"
    assert all(len(p["replicas"]) == 3 for p in found)  # type: ignore[arg-type]
    assert {str(p["topic"]) for p in found if p["partition"] == cluster_settings.topic_partitions - 1} == set(names)
    configs = await _topic_configs(cluster_settings, names)
    assert {t: c["min.insync.replicas"] for t, c in configs.items()} == dict.fromkeys(names, "2")
    # the internal topics that transactions and consumer groups use are replicated as much
    internal = await cluster.partitions(["__transaction_state", "__consumer_offsets"])
    assert internal and all(len(p["replicas"]) == 3 for p in internal)  # type: ignore[arg-type]


async def _read_committed(settings: Settings, topic: str, partitions: int, want: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(**client_options(settings), isolation_level="read_committed",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        got: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(got) < want and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                got.extend(r.value for r in records if r.value is not None)
        return got
    finally:
        await consumer.stop()


@on_cluster
async def test_transactions_survive_a_broker_sigkill(cluster_settings: Settings) -> None:  # noqa: F811
    settings = cluster.with_unique_names(cluster_settings)
    await ensure_topics(settings)
    topic = settings.topic_results
    # the node that leads partition 0 goes: its partitions need a new leader mid-test
    victim = await cluster.leader_of(topic, 0)
    producer = make_transactional_producer(settings, f"{settings.consumer_group}.cluster-test")
    await producer.start()
    try:
        async with producer.transaction():
            for p in range(settings.topic_partitions):
                await producer.send_and_wait(topic, f"before-{p}".encode(), partition=p)
        cluster.kill_broker(victim)
        fenced_after = await cluster.wait_broker_gone(victim)
        # two of three replicas are left, as many as min.insync.replicas asks for
        async with producer.transaction():
            for p in range(settings.topic_partitions):
                await producer.send_and_wait(topic, f"during-{p}".encode(), partition=p)
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted", partition=0)
        await producer.abort_transaction()
        got = await _read_committed(settings, topic, settings.topic_partitions, 2 * settings.topic_partitions)
        assert sorted(got) == sorted([f"{w}-{p}".encode() for w in ("before", "during")
                                      for p in range(settings.topic_partitions)])
        assert fenced_after < 20, f"node {victim} left the ISRs only after {fenced_after:.1f}s"
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
        await cluster.start_broker(victim)  # back in every ISR: healthy for the next test
    assert victim in await cluster.brokers_registered()
    assert await cluster.fully_replicated()
    # and the restarted node serves the committed records too
    victim_address = f"127.0.0.1:{cluster.KAFKA_PORTS[victim - 1]}"
    only_victim = settings.model_copy(update={"kafka_bootstrap_servers": victim_address})
    again = await _read_committed(only_victim, topic, settings.topic_partitions, 2 * settings.topic_partitions)
    assert len(again) == 2 * settings.topic_partitions and b"aborted" not in again


@on_cluster
async def test_redis_cluster_has_three_masters_with_a_replica_each(cluster_settings: Settings) -> None:  # noqa: F811
    nodes = await cluster.redis_nodes()
    masters = [n for n in nodes if n.role == "master"]
    replicas = [n for n in nodes if n.role == "replica"]
    assert len(masters) == 3 and len(replicas) == 3
    covered = sorted(s for m in masters for a, b in m.slots for s in range(a, b + 1))
    assert covered == list(range(cluster.SLOTS)), "every slot exactly once"
    assert sorted(r.master_id or "" for r in replicas) == sorted(m.node_id for m in masters)
    assert await cluster.cluster_ok()


def _cluster_client(settings: Settings) -> RedisCluster:
    client: RedisCluster = redis_client.connect(settings)
    assert redis_client.is_cluster(client)
    return client


@on_cluster
async def test_killed_master_is_replaced_by_its_replica_and_rejoins(cluster_settings: Settings) -> None:  # noqa: F811
    settings = cluster.with_unique_names(cluster_settings)
    key = f"{settings.redis_key_prefix}:failover"
    await cluster.wait_cluster_ok(60)  # an earlier fault test's node may still be settling
    client = _cluster_client(settings)
    try:
        await client.set(key, "kept")
        master = await cluster.owner_of(key)
        direct = Redis(port=master.port)
        assert await direct.execute_command("WAIT", 1, 2000) == 1, "the replica has the write"  # type: ignore[no-untyped-call]
        await direct.aclose()
        nodes = await cluster.redis_nodes()
        replica = next(n for n in nodes if n.master_id == master.node_id)
        cluster.kill_redis(master.port)
        promoted, seconds = await cluster.wait_failover(master.port, timeout=20, before_kill=nodes)
        assert promoted == replica.port
        assert seconds < 15, f"failover took {seconds:.1f}s"
        assert await _get_retrying(client, key) == b"kept"
    finally:
        await cluster.start_redis(master.port, promote=True)
        with contextlib.suppress(Exception):
            await client.delete(key)
        await client.aclose()
    # the old master is master again and its replica a replica: the layout of before
    after = {n.port: n for n in await cluster.redis_nodes()}
    assert after[master.port].role == "master" and after[replica.port].master_id == master.node_id
    assert await cluster.cluster_ok()


async def _get_retrying(client: RedisCluster, key: str, timeout: float = 15) -> Any:
    """The cluster client rereads the slot map after the errors of a failover; retry meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await client.get(key)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


@on_cluster
async def test_reshard_moves_a_keys_slot_and_the_key_stays_readable(cluster_settings: Settings) -> None:  # noqa: F811
    settings = cluster.with_unique_names(cluster_settings)
    key = f"{settings.redis_key_prefix}:moved"
    client = _cluster_client(settings)
    try:
        await client.set(key, "here")
        await client.set(f"{{{key}}}:same-slot", "too")  # a second key of that slot moves with it
        source = await cluster.owner_of(key)
        target = next(n for n in await cluster.redis_nodes() if n.role == "master" and n.port != source.port)
        assert await client.get(key) == b"here"  # the client's slot map now names the source
        slot = await cluster.reshard(key, target.port)
        assert slot == await cluster.slot_of(key)
        assert (await cluster.owner_of(key)).port == target.port
        # the client still thinks the source has it: MOVED sends it to the target
        assert await client.get(key) == b"here"
        assert await client.get(f"{{{key}}}:same-slot") == b"too"
        assert await Redis(port=target.port).exists(key) == 1
        await cluster.reshard(slot, source.port)  # back, so the next test sees the usual layout
        assert await client.get(key) == b"here"
    finally:
        with contextlib.suppress(Exception):
            await client.delete(key, f"{{{key}}}:same-slot")
        await client.aclose()
    assert await cluster.cluster_ok()


@on_cluster
async def test_every_lua_script_runs_on_the_cluster(cluster_settings: Settings) -> None:  # noqa: F811
    """A script touching a key of another slot fails there (CROSSSLOT, or a key of another
    node); every script, through every path, runs clean on the cluster client."""
    settings = cluster.with_unique_names(cluster_settings)
    client = _cluster_client(settings)
    either: Any = client  # RedisStore is typed for the one-server client; both share the command API
    store = RedisStore(either, prefix=settings.redis_key_prefix)
    try:
        seen = await exercise_every_script(store, 7, "cluster-audit")
        assert seen["pending"].detail == "CONFIRMED"
        assert seen["new"] == ["OK", "OK", "FULL"] and seen["dup"] == "DUP"
        assert seen["many"] == ["OK"] * 6
        assert (seen["release"], seen["release_again"], seen["release_stored"]) == ("RELEASED", "DONE", "RELEASED")
        assert seen["cold"] == "OK" and seen["forced"]
        assert (seen["old_window_before"], seen["old_window_after"]) == (1, 0)
        # every key the scripts left is on the one master of the badge's hash tag
        owner = await cluster.owner_of("{7:cluster-audit}")
        holders = {}
        for node in [n for n in await cluster.redis_nodes() if n.role == "master"]:
            direct = Redis(port=node.port)
            holders[node.port] = [k async for k in direct.scan_iter(match=f"{settings.redis_key_prefix}:*")]
            await direct.aclose()
        assert holders[owner.port], "the scenario left no keys"
        assert all(not keys for port, keys in holders.items() if port != owner.port), holders
        # and the cluster does refuse a script touching an undeclared key of another node (one
        # of the same node passes: Redis 7.0 only checks locality, so MONITOR on one server,
        # test_lua_keys.py, stays the complete audit)
        elsewhere = f"{settings.redis_key_prefix}:other0"
        for n in range(1, 100):
            if (await cluster.owner_of(elsewhere)).port != owner.port:
                break
            elsewhere = f"{settings.redis_key_prefix}:other{n}"
        probe = client.register_script("return redis.call('GET', ARGV[1])")
        with pytest.raises(ResponseError, match="non local key"):
            await probe(keys=[f"{settings.redis_key_prefix}:{{7:cluster-audit}}:probe"], args=[elsewhere])
    finally:
        direct = Redis(port=(await cluster.owner_of("{7:cluster-audit}")).port)
        keys = [k async for k in direct.scan_iter(match=f"{settings.redis_key_prefix}:*")]
        if keys:
            await direct.delete(*keys)
        await direct.aclose()
        await client.aclose()


def test_compose_cluster_profile_has_the_same_topology() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = {name: s for name, s in compose["services"].items() if "cluster" in s.get("profiles", [])}
    kafka = sorted(n for n in services if n.startswith("kafka-"))
    redis = sorted(n for n in services if n.startswith("redis-") and n != "redis-cluster-create")
    assert len(kafka) == 3 and len(redis) == 6
    voters = {services[n]["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"] for n in kafka}
    assert len(voters) == 1 and voters.pop().count("@") == 3, "one 3-voter quorum"
    for n in kafka:
        env = services[n]["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert (env["KAFKA_DEFAULT_REPLICATION_FACTOR"], env["KAFKA_MIN_INSYNC_REPLICAS"]) == ("3", "2")
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
    # host networking: each node announces 127.0.0.1:PORT, the ports of the local cluster stack
    assert all(services[n].get("network_mode") == "host" for n in [*kafka, *redis])
    assert sorted(services[n]["environment"]["KAFKA_ADVERTISED_LISTENERS"].rsplit(":", 1)[1] for n in kafka) == \
        ["9192", "9193", "9194"]
    redis_ports = []
    for n in redis:
        command = services[n]["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        redis_ports.append(command[command.index("--port") + 1])
    assert sorted(redis_ports) == [str(p) for p in range(7000, 7006)]
    create = services["redis-cluster-create"]
    assert "--cluster-replicas 1" in " ".join(create["command"]) and set(create["depends_on"]) == set(redis)
