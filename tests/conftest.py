"""Real servers for the integration tests, never mocks.

Where they come from, in order:
1. KAFKA_BOOTSTRAP_SERVERS / REDIS_URL / MONGODB_URI set in the environment: used as given;
2. else, if a Docker engine answers: testcontainers with the official Kafka, Redis and
   MongoDB images;
3. else: the project's local stack (deploy/local/stack up), installed and started here.
Every test gets its own topics, consumer group, Redis key prefix and MongoDB database.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from badge_worker.adapters import redis_client as redis_connection
from badge_worker.adapters.kafka_io import ensure_topics
from badge_worker.adapters.mongo import Repositories
from badge_worker.adapters.redis_store import RedisStore
from badge_worker.settings import Settings

# The dev install has the otel extra: with no collector to send to, spans stay off in tests
# (and in the worker processes they start) unless a test turns them on (test_tracing_otel.py).
os.environ.setdefault("OTEL_SDK_DISABLED", "true")

REPO = Path(__file__).resolve().parents[1]
STACK = REPO / "deploy" / "local" / "stack"


@dataclass(frozen=True)
class Servers:
    kafka: str
    redis: str
    mongodb: str
    source: str


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def _containers() -> Iterator[Servers]:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.mongodb import MongoDbContainer
    from testcontainers.redis import RedisContainer

    with KafkaContainer("apache/kafka:3.9.1").with_kraft() as kafka, RedisContainer("redis:7") as redis, \
            MongoDbContainer("mongo:7") as mongo:
        host = redis.get_container_host_ip()
        yield Servers(kafka.get_bootstrap_server(),
                      f"redis://{host}:{redis.get_exposed_port(6379)}/0",
                      mongo.get_connection_url(), "testcontainers")


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    env = {k: os.environ.get(k) for k in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "MONGODB_URI")}
    if all(env.values()):
        yield Servers(env["KAFKA_BOOTSTRAP_SERVERS"] or "", env["REDIS_URL"] or "", env["MONGODB_URI"] or "",
                      "environment")
        return
    if _docker_answers():
        with _containers() as found:
            yield found
        return
    subprocess.run([str(STACK), "up"], check=True)
    kafka_port = os.environ.get("KAFKA_PORT", "9092")
    redis_port = os.environ.get("REDIS_PORT", "6379")
    mongo_port = os.environ.get("MONGO_PORT", "27017")
    yield Servers(f"127.0.0.1:{kafka_port}", f"redis://127.0.0.1:{redis_port}/0",
                  f"mongodb://127.0.0.1:{mongo_port}", "local stack")


@pytest.fixture
def settings(servers: Servers) -> Settings:
    """Settings naming this test's own topics, group, key prefix and database."""
    tag = uuid.uuid4().hex[:10]
    return Settings(
        kafka_bootstrap_servers=servers.kafka, redis_url=servers.redis, mongodb_uri=servers.mongodb,
        mongodb_database=f"t_{tag}", consumer_group=f"g-{tag}",
        topic_claims=f"t{tag}.claims", topic_earns=f"t{tag}.earns", topic_results=f"t{tag}.results",
        topic_errors=f"t{tag}.errors", topic_dlq=f"t{tag}.dlq", topic_events=f"t{tag}.events",
        redis_key_prefix=f"bw{tag}",
        topic_partitions=4, http_port=0, backoff_initial_s=0.2, backoff_max_s=2.0, badge_cache_ttl_s=0.2,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a `badge-worker` subprocess use these settings."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if isinstance(value, SecretStr):  # a dump masks it; the subprocess needs the value
            value = value.get_secret_value()
        if value is None:
            env.pop(name.upper(), None)
        else:
            env[name.upper()] = str(value)
    env["LOG_LEVEL"] = "INFO"
    return env


@pytest.fixture
async def topics(settings: Settings) -> Settings:
    await ensure_topics(settings)
    return settings


@pytest.fixture
async def mongo(settings: Settings) -> AsyncIterator[Repositories]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri)
    repos = Repositories(client[settings.mongodb_database])
    await repos.ensure_indexes()
    yield repos
    with contextlib.suppress(Exception):
        await client.drop_database(settings.mongodb_database)
    await client.close()


@pytest.fixture
async def redis_client(settings: Settings) -> AsyncIterator[Redis]:
    client = redis_connection.connect(settings)  # a Redis Cluster client when REDIS_CLUSTER=true
    yield client
    with contextlib.suppress(Exception):
        keys = [k async for k in client.scan_iter(match=f"{settings.redis_key_prefix}:*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
    await client.aclose()


@pytest.fixture
def store(redis_client: Redis, settings: Settings) -> RedisStore:
    return RedisStore(redis_client, prefix=settings.redis_key_prefix)


class WorkerProcess:
    """`badge-worker run` as a real OS process, for SIGKILL and multi-worker tests."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings, self.log_path = settings, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "badge_worker.cli", "run"],
                                     env=settings_env(self.settings), stdout=log, stderr=log)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)


@pytest.fixture
def worker_processes(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.kill()

