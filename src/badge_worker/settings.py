"""All settings in one place, read from the environment (names of CONTRACT.md section 1)."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # CONTRACT.md section 1
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False  # REDIS_URL names one node of a Redis Cluster (adapters/redis_client.py)
    mongodb_uri: str = "mongodb://127.0.0.1:27017"
    mongodb_database: str = "badges"
    consumer_group: str = "badge-worker"
    topic_claims: str = "badges.claims"
    topic_earns: str = "badges.earns"
    topic_results: str = "badges.results"
    topic_errors: str = "badges.errors"
    topic_dlq: str = "badges.dlq"
    topic_events: str = "badges.events"  # CONTRACT.md section 7: one notification per successful earn/issue/revoke
    # section 6: the read API (`badge-worker api`)
    api_host: str = "0.0.0.0"
    api_port: int = 8000
    api_key_cache_ttl_s: float = 5.0  # a revoked key is refused by every API process within this
    api_shutdown_grace_s: float = 10.0  # SIGTERM: requests in flight may finish within this

    # the worker's own knobs
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    redis_key_prefix: str = "bw"
    topic_partitions: int = 8  # used when the worker creates missing topics
    topic_replication_factor: int = 1  # of the topics it creates: 3 on a cluster (README, scale-out)
    topic_min_insync_replicas: int | None = None  # min.insync.replicas of those topics; None = broker default
    output_max_message_bytes: int = 2_097_152  # max.message.bytes of the output topics it creates
    batch_max_records: int = 2000
    fetch_timeout_ms: int = 200
    fetch_max_wait_ms: int = 50  # broker-side wait for new records: the floor of the latency
    # entities processed at once, all partitions together: a few whole batches, so that a
    # batch's writes go out together (256 cut a batch of 1,200 earns into waves of one round
    # trip each) and memory stays bounded
    concurrency: int = 4000
    redis_max_connections: int = 64
    # a MongoDB request the server never answers becomes a retryable NetworkTimeout after this
    mongodb_socket_timeout_ms: int = 30_000
    max_attempts: int = 3  # per message, for unexpected errors, before 500 + DLQ
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 15.0
    badge_cache_ttl_s: float = 2.0
    outcome_cache_ttl_s: float = 600.0  # Redis keeps each outcome this long, for redeliveries; 0 = off
    http_port: int = 8080  # /healthz /readyz /metrics; 0 disables
    log_level: str = "INFO"
    transaction_timeout_ms: int = 60_000
    # group membership: a stable GROUP_INSTANCE_ID (e.g. the pod name of a StatefulSet) makes
    # membership static, so a restarted worker gets its partitions back at once
    group_instance_id: str | None = None
    session_timeout_ms: int = 15_000
    rebalance_timeout_ms: int = 30_000  # the revoke callback returns within REVOKE_TIMEOUT_S, far below
    heartbeat_interval_ms: int = 3_000
    kafka_call_timeout_s: float = 30.0  # bound on one producer/consumer call
    revoke_timeout_s: float = 5.0  # bound on cancelling the work of revoked partitions
    batch_timeout_s: float = 120.0  # one partition batch; past it the batch is rewound and retried
    shutdown_grace_s: float = 10.0  # SIGTERM: the batch in hand may finish within this (closing takes ≤ ~17 s more)
    liveness_timeout_s: float = 120.0  # /healthz fails when the consume loop stalls this long
    replay_signing_key: str | None = None  # else a random key kept in MongoDB (replay_marks.py)

    def output_topics(self) -> list[str]:
        return [self.topic_results, self.topic_errors, self.topic_dlq, self.topic_events]

    def input_topics(self) -> list[str]:
        return [self.topic_claims, self.topic_earns]


def redact(uri: str) -> str:
    """A connection string without its password, for logs."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
