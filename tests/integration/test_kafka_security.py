"""Every Kafka client of the project over SASL (SCRAM-SHA-256/512, PLAIN) and SASL_SSL,
against the local stack's secured listeners (deploy/local/stack env: KAFKA_SCRAM_* lines;
docs/security.md).

What is shown: the worker's own producer/consumer shapes round-trip over each mechanism;
TLS settings (CA, client certificate, encrypted key) work and each wrong one is refused
with a reason; a whole `badge-worker run` process processes an earn over SCRAM; a wrong
password stops the worker within seconds (exit 78, one JSON line naming authentication)
and no password is ever written to its output; `dlq replay` runs over the same settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from badge_worker.adapters import kafka_io
from badge_worker.adapters.mongo import Repositories
from badge_worker.client import Collector, Publisher
from badge_worker.settings import Settings
from tests.conftest import STACK, Servers, WorkerProcess, settings_env
from tests.integration.helpers import ORG, live_badge, load

WRONG_PASSWORD = "wrong-pw-5d1e77c2"  # distinctive: a leak is found by a substring search


@pytest.fixture(scope="module")
def secured_listeners(servers: Servers) -> dict[str, str]:
    """The stack's secured listeners and test user: from the environment when KAFKA_SCRAM_*
    is set there, else from `deploy/local/stack env` (the servers fixture started the stack)."""
    if "KAFKA_SCRAM_BOOTSTRAP_SERVERS" in os.environ:
        return {k: v for k, v in os.environ.items() if k.startswith("KAFKA_SCRAM_")}
    printed = subprocess.run([str(STACK), "env"], capture_output=True, text=True, check=True, timeout=60).stdout
    found = dict(line.removeprefix("export ").split("=", 1) for line in printed.splitlines()
                 if line.startswith("export KAFKA_SCRAM_"))
    assert "KAFKA_SCRAM_BOOTSTRAP_SERVERS" in found, printed
    return found


def with_kafka(settings: Settings, **fields: Any) -> Settings:
    """This test's settings (topics, group, database) reaching Kafka as `fields` say,
    validated together like the environment would be."""
    return Settings(**{**settings.model_dump(), **fields})


def over_sasl(settings: Settings, listeners: dict[str, str], mechanism: str = "SCRAM-SHA-256",
              password: str | None = None) -> Settings:
    return with_kafka(
        settings, kafka_bootstrap_servers=listeners["KAFKA_SCRAM_BOOTSTRAP_SERVERS"],
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism=mechanism,
        kafka_sasl_username=listeners["KAFKA_SCRAM_USERNAME"],
        kafka_sasl_password=password or listeners["KAFKA_SCRAM_PASSWORD"])


def over_sasl_ssl(settings: Settings, listeners: dict[str, str], **tls: Any) -> Settings:
    fields: dict[str, Any] = dict(
        kafka_bootstrap_servers=listeners["KAFKA_SCRAM_SSL_BOOTSTRAP_SERVERS"], kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username=listeners["KAFKA_SCRAM_USERNAME"],
        kafka_sasl_password=listeners["KAFKA_SCRAM_PASSWORD"], kafka_ssl_cafile=listeners["KAFKA_SCRAM_CAFILE"],
        kafka_ssl_certfile=listeners["KAFKA_SCRAM_CLIENT_CERTFILE"],
        kafka_ssl_keyfile=listeners["KAFKA_SCRAM_CLIENT_KEYFILE"],
        kafka_ssl_key_password=listeners["KAFKA_SCRAM_CLIENT_KEY_PASSWORD"])
    fields.update(tls)
    return with_kafka(settings, **fields)


def secured_env(settings: Settings) -> dict[str, str]:
    """settings_env, with the secrets themselves (model_dump keeps them as SecretStr)."""
    env = settings_env(settings)
    for name in ("kafka_sasl_password", "kafka_ssl_key_password"):
        secret = getattr(settings, name)
        if secret is not None:
            env[name.upper()] = secret.get_secret_value()
    return env


class SecuredWorkerProcess(WorkerProcess):
    def start(self) -> SecuredWorkerProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "badge_worker.cli", "run"],
                                     env=secured_env(self.settings), stdout=self.log_path.open("ab"),
                                     stderr=subprocess.STDOUT)
        return self


async def round_trip(s: Settings) -> None:
    """What the worker does with Kafka: topics through the admin client, a transactional
    producer, a read_committed group consumer, all built by kafka_io."""
    await kafka_io.ensure_topics(s, partitions=1)
    assert await kafka_io.message_size_limits(s, [s.topic_results]) == {s.topic_results: s.output_max_message_bytes}
    (tp,) = await kafka_io.partitions_of(s, [s.topic_earns])
    value = uuid.uuid4().bytes
    producer = kafka_io.make_transactional_producer(s, kafka_io.partition_transactional_id(s, tp.topic, 0))
    await kafka_io.start_client(producer, s)
    try:
        async with producer.transaction():
            await producer.send(s.topic_earns, value, key=b"k", partition=0)
    finally:
        await producer.stop()
    consumer = kafka_io.make_consumer(s)
    await kafka_io.start_client(consumer, s)
    try:
        consumer.assign([TopicPartition(s.topic_earns, 0)])
        batch = await consumer.getmany(timeout_ms=10_000)
        assert [r.value for records in batch.values() for r in records] == [value]
    finally:
        await consumer.stop()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
async def test_worker_clients_round_trip_over_sasl(settings: Settings, secured_listeners: dict[str, str],
                                                   mechanism: str) -> None:
    s = over_sasl(settings, secured_listeners, mechanism)
    assert kafka_io.client_options(s)["sasl_mechanism"] == mechanism
    await round_trip(s)


async def test_the_plain_listener_and_defaults_work_as_before(settings: Settings) -> None:
    assert kafka_io.client_options(settings)["security_protocol"] == "PLAINTEXT"
    await round_trip(settings)


async def test_sasl_ssl_with_a_private_ca_and_a_client_certificate(settings: Settings,
                                                                   secured_listeners: dict[str, str]) -> None:
    await round_trip(over_sasl_ssl(settings, secured_listeners))


@pytest.mark.parametrize(("change", "reason"), [
    ({"kafka_ssl_cafile": None}, "certificate verify failed"),  # the system's CAs do not know the local CA
    ({"kafka_ssl_certfile": None, "kafka_ssl_keyfile": None, "kafka_ssl_key_password": None},
     "alert"),  # the broker requires a client certificate
    ({"kafka_ssl_key_password": "not-the-key-password"}, "cannot load the Kafka TLS files"),
    ({"kafka_sasl_password": WRONG_PASSWORD}, "Kafka authentication failed"),
])
async def test_each_wrong_tls_or_sasl_setting_is_refused_with_its_reason(
        settings: Settings, secured_listeners: dict[str, str], change: dict[str, Any], reason: str) -> None:
    s = over_sasl_ssl(settings, secured_listeners, **change)
    began = time.monotonic()
    with pytest.raises(kafka_io.KafkaSecurityError, match=reason) as refused:
        await kafka_io.ensure_topics(s)
    assert time.monotonic() - began < 10
    assert WRONG_PASSWORD not in str(refused.value)


async def test_an_unreachable_secured_broker_stays_an_outage(settings: Settings,
                                                             secured_listeners: dict[str, str]) -> None:
    """Nothing answers: the worker's outage retry handles it, not the security error."""
    s = over_sasl(settings, secured_listeners).model_copy(update={"kafka_bootstrap_servers": "127.0.0.1:1"})
    await kafka_io.check_security(s, timeout=5)  # no broker refused anything
    with pytest.raises(KafkaConnectionError):
        await kafka_io.ensure_topics(s)


async def test_a_worker_process_over_scram_processes_an_earn(settings: Settings, mongo: Repositories,
                                                             secured_listeners: dict[str, str],
                                                             worker_processes: list[WorkerProcess],
                                                             tmp_path: Path) -> None:
    s = over_sasl(settings, secured_listeners, "SCRAM-SHA-512")
    await load(mongo, live_badge("sec-b"))
    log = tmp_path / "worker.log"
    worker = SecuredWorkerProcess(s, log).start()
    worker_processes.append(worker)
    async with Collector(s) as collector, Publisher(s) as publisher:  # client.py over SCRAM too
        coord = await publisher.send(s.topic_earns, {"orgId": ORG, "requestId": "sec-1", "badgeMetaId": "sec-b",
                                                     "customerId": 7})
        outcome = (await collector.wait_for([coord], 90))[coord]
    assert outcome.code == 200, outcome.body
    assert len(await mongo.earned.find({"requestId": "sec-1"}).to_list()) == 1
    assert worker.terminate() == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    started = next(line for line in lines if line["event"] == "connecting")
    assert (started["kafka_security_protocol"], started["kafka_sasl_mechanism"]) == ("SASL_PLAINTEXT", "SCRAM-SHA-512")
    assert secured_listeners["KAFKA_SCRAM_PASSWORD"] not in log.read_text()


async def test_a_wrong_password_stops_the_worker_fast_and_is_never_logged(
        settings: Settings, secured_listeners: dict[str, str], mongo: Repositories) -> None:
    # (mongo: the worker prepares its database before Kafka; the fixture drops it afterwards)
    s = over_sasl(settings, secured_listeners, password=WRONG_PASSWORD)
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "badge_worker.cli", "run"], env=secured_env(s),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 78, done.stderr
    assert time.monotonic() - began < 30
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line is JSON
    (refused,) = [line for line in lines if line["event"] == "kafka_security_error"]
    assert refused["level"] == "error" and "authentication failed" in refused["reason"].lower()
    assert "SCRAM-SHA-256" in refused["reason"] and secured_listeners["KAFKA_SCRAM_USERNAME"] in refused["reason"]
    assert not any(line["event"] == "dependencies_unavailable" for line in lines)  # not taken for an outage
    assert WRONG_PASSWORD not in done.stderr + done.stdout


async def test_dlq_replay_cli_runs_over_the_secured_settings(settings: Settings, secured_listeners: dict[str, str],
                                                             mongo: Repositories) -> None:
    s = over_sasl_ssl(settings, secured_listeners)
    await kafka_io.ensure_topics(s, partitions=1)
    done = subprocess.run([sys.executable, "-m", "badge_worker.cli", "dlq", "replay"], env=secured_env(s),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "scanned 0, replayed 0" in done.stderr
    wrong = over_sasl_ssl(settings, secured_listeners, kafka_sasl_password=WRONG_PASSWORD)
    refused = subprocess.run([sys.executable, "-m", "badge_worker.cli", "dlq", "replay"], env=secured_env(wrong),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 78, refused.stderr
    (line,) = [json.loads(text) for text in refused.stderr.splitlines() if '"kafka_security_error"' in text]
    assert "Kafka authentication failed" in line["reason"]
    assert WRONG_PASSWORD not in refused.stderr + refused.stdout
