"""All settings in one place, read from the environment (names of CONTRACT.md section 1)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class Settings(BaseSettings):
    # hide_input_in_errors: a refused value may be a password (KAFKA_SASL_PASSWORD, a URI)
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore",
                                      hide_input_in_errors=True)

    # CONTRACT.md section 1
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    # How every Kafka client of the project connects (kafka_io.client_options, docs/security.md).
    # Secrets are SecretStr: repr, str and model_dump_json show only asterisks.
    kafka_security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: KafkaSaslMechanism = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None  # PEM CA bundle; unset: the system's trusted CAs
    kafka_ssl_certfile: str | None = None  # PEM client certificate (mutual TLS)
    kafka_ssl_keyfile: str | None = None  # PEM private key of that certificate
    kafka_ssl_key_password: SecretStr | None = None  # when that key is encrypted
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
    # 500, not 2,000: the same drain rate on the local stack, a third of the peak RSS (104 vs
    # 171 MB) and a quarter of the records a SIGKILL leaves in flight for the restart to resume
    batch_max_records: int = 500
    fetch_timeout_ms: int = 200
    fetch_max_wait_ms: int = 50  # broker-side wait for new records: the floor of the latency
    # entities processed at once, all partitions together: a few whole batches, so that a
    # batch's writes go out together (256 cut a batch of 1,200 earns into waves of one round
    # trip each) and memory stays bounded
    concurrency: int = 4000
    redis_max_connections: int = 64
    # a MongoDB request the server never answers becomes a retryable NetworkTimeout after this
    mongodb_socket_timeout_ms: int = 30_000
    # MongoDB write batches in flight at once (adapters/mongo_batch.py); 1 = one writer, which a
    # store that refuses concurrent writers (FerretDB on SQLite) falls back to by itself
    mongodb_write_flushes: int = Field(default=4, ge=1, le=64)
    # Python's youngest GC generation is collected after this many new container objects
    # (its default 700 made collections ~30% of the worker's CPU: a batch in flight survives
    # young collections and is promoted, so full collections ran every ~10 s); 0 = Python's default
    gc_young_threshold: int = Field(default=20_000, ge=0)
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

    @model_validator(mode="after")
    def _kafka_security_fits(self) -> Settings:
        """Refuse a half-configured secured connection at start-up, naming the variables,
        rather than a broker refusing it later with a vaguer reason."""
        protocol = self.kafka_security_protocol
        sasl, ssl = protocol.startswith("SASL_"), protocol.endswith("SSL")
        problems: list[str] = []
        if sasl:
            missing = [name for name, value in (("KAFKA_SASL_USERNAME", self.kafka_sasl_username),
                                                ("KAFKA_SASL_PASSWORD", self.kafka_sasl_password))
                       if not value or (isinstance(value, SecretStr) and not value.get_secret_value())]
            if missing:
                problems.append(f"KAFKA_SECURITY_PROTOCOL={protocol} needs {' and '.join(missing)}")
        elif self.kafka_sasl_username or self.kafka_sasl_password:
            problems.append(f"KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD are set but KAFKA_SECURITY_PROTOCOL={protocol}"
                            " does not use SASL (SASL_PLAINTEXT or SASL_SSL)")
        tls_files = {"KAFKA_SSL_CAFILE": self.kafka_ssl_cafile, "KAFKA_SSL_CERTFILE": self.kafka_ssl_certfile,
                     "KAFKA_SSL_KEYFILE": self.kafka_ssl_keyfile}
        if not ssl and (any(tls_files.values()) or self.kafka_ssl_key_password):
            problems.append(f"KAFKA_SSL_* settings are set but KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS"
                            " (SSL or SASL_SSL)")
        if ssl:
            problems += [f"{name}={path}: no such file" for name, path in tls_files.items()
                         if path and not Path(path).is_file()]
            if self.kafka_ssl_keyfile and not self.kafka_ssl_certfile:
                problems.append("KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE (the certificate of that key)")
            if self.kafka_ssl_key_password and not self.kafka_ssl_certfile:
                problems.append("KAFKA_SSL_KEY_PASSWORD needs KAFKA_SSL_CERTFILE")
        if problems:
            raise ValueError("; ".join(problems))
        return self

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
