"""Kafka transport: consumer and transactional producers, topics, and record shapes out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import ssl
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    IllegalSaslStateError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from badge_worker import constants as K
from badge_worker.domain.commands import Stream
from badge_worker.domain.outcomes import clip
from badge_worker.service.messages import InputRecord, Result
from badge_worker.settings import Settings

Headers = list[tuple[str, bytes]]


class KafkaSecurityError(Exception):
    """The broker refused this client's credentials or TLS settings: retrying cannot help,
    so the worker stops (exit 78) instead of backing off for ever. Never holds a secret."""


def client_options(settings: Settings) -> dict[str, Any]:
    """Where and how every Kafka client of the project connects: pass it as `**options` to
    AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient (docs/security.md)."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"bootstrap_servers": settings.kafka_bootstrap_servers,
                               "security_protocol": protocol}
    if protocol.startswith("SASL_"):
        assert settings.kafka_sasl_password is not None  # Settings refuses SASL without one
        options.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                       sasl_plain_username=settings.kafka_sasl_username,
                       sasl_plain_password=settings.kafka_sasl_password.get_secret_value())
    if protocol.endswith("SSL"):
        options["ssl_context"] = _ssl_context(settings)
    return options


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    """Verifies the broker's certificate and host name (against KAFKA_SSL_CAFILE, else the
    system's CAs); presents a client certificate when one is configured."""
    key_password = settings.kafka_ssl_key_password
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=settings.kafka_ssl_cafile, certfile=settings.kafka_ssl_certfile, keyfile=settings.kafka_ssl_keyfile,
            password=key_password.get_secret_value() if key_password else None)
    except (ssl.SSLError, OSError) as exc:  # e.g. a wrong key password, a file that is no PEM
        raise KafkaSecurityError(f"cannot load the Kafka TLS files (KAFKA_SSL_CAFILE/CERTFILE/KEYFILE, "
                                 f"KAFKA_SSL_KEY_PASSWORD): {type(exc).__name__}: {exc}") from None
    return context


_REFUSED = (SaslAuthenticationFailed, AuthenticationFailedError, AuthenticationMethodNotSupported,
            UnsupportedSaslMechanismError, IllegalSaslStateError)


async def check_security(settings: Settings, timeout: float | None = None) -> None:
    """Raise KafkaSecurityError if a bootstrap broker refuses our SASL credentials or TLS
    settings. aiokafka only logs why each broker failed and then raises "Unable to
    bootstrap", which looks like an outage; one direct connection tells the two apart.
    Unreachable brokers are left to the caller (an outage, retried). PLAINTEXT: nothing."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return
    options = client_options(settings)
    options.pop("bootstrap_servers")
    seconds = timeout if timeout is not None else settings.kafka_call_timeout_s
    for server in settings.kafka_bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            conn = await asyncio.wait_for(create_conn(host.strip("[]"), int(port), client_id=settings.worker_id,
                                                      request_timeout_ms=int(seconds * 1000), **options), seconds)
        except _REFUSED as exc:
            who = (f"user {settings.kafka_sasl_username!r} with {settings.kafka_sasl_mechanism}"
                   if settings.kafka_security_protocol.startswith("SASL_") else "this client")
            raise KafkaSecurityError(f"Kafka authentication failed at {server.strip()} for {who} over "
                                     f"{settings.kafka_security_protocol}: {exc}") from None
        except (ssl.SSLError, KafkaConnectionError) as exc:
            # a TLS alert after the handshake (the broker refused our client certificate, or
            # wanted one) reaches us as a closed connection caused by an SSLError
            tls = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
            if not isinstance(tls, ssl.SSLError):
                continue  # unreachable: try the next one; the caller treats it as an outage
            raise KafkaSecurityError(f"TLS handshake with Kafka at {server.strip()} failed over "
                                     f"{settings.kafka_security_protocol}: {tls}") from None
        except (OSError, TimeoutError, ValueError):
            continue  # unreachable (or no port): try the next one; the caller treats it as an outage
        conn.close()
        return


class _Startable(Protocol):
    async def start(self) -> None: ...


async def start_client(client: _Startable, settings: Settings) -> None:
    """`client.start()`, but a start refused for credentials or TLS raises KafkaSecurityError
    naming why, instead of aiokafka's bare "Unable to bootstrap"."""
    try:
        await client.start()
    except KafkaConnectionError:
        await check_security(settings)
        raise


async def ensure_topics(settings: Settings, partitions: int | None = None) -> None:
    admin = AIOKafkaAdminClient(**client_options(settings))
    await start_client(admin, settings)
    try:
        existing = set(await admin.list_topics())
        wanted = [*settings.input_topics(), *settings.output_topics()]
        # Outputs may carry a little more than an input (a DLQ copy adds headers to a value up
        # to the broker's 1 MB default): their topics take OUTPUT_MAX_MESSAGE_BYTES.
        outputs = set(settings.output_topics())
        replicated = ({"min.insync.replicas": str(settings.topic_min_insync_replicas)}
                      if settings.topic_min_insync_replicas else {})
        missing = [NewTopic(t, partitions or settings.topic_partitions, settings.topic_replication_factor,
                            topic_configs={**replicated, "max.message.bytes": str(settings.output_max_message_bytes)}
                            if t in outputs else replicated or None)
                   for t in wanted if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()


async def message_size_limits(settings: Settings, topics: list[str]) -> dict[str, int]:
    """Each topic's effective `max.message.bytes` (its own, or the broker's default)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await start_client(admin, settings)
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, {"max.message.bytes": None}) for t in topics])
    finally:
        await admin.close()
    limits: dict[str, int] = {}
    for response in responses:
        for _code, _message, _type, name, entries in response.resources:
            for entry in entries:
                if entry[0] == "max.message.bytes" and str(entry[1]).isdigit():
                    limits[name] = int(entry[1])
    return limits


async def partitions_of(settings: Settings, topics: list[str], timeout: float = 30.0) -> list[TopicPartition]:
    """Every partition of `topics` (a consumer only knows the topics it subscribes to).

    Just after a topic is created the broker may describe it without partitions yet: wait."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await start_client(admin, settings)
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while True:
            described = await admin.describe_topics(topics)
            found = {t["topic"]: t for t in described if t["error_code"] == 0 and t["partitions"]}
            if set(found) >= set(topics) or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    return [TopicPartition(t["topic"], p["partition"]) for t in found.values()
            for p in sorted(t["partitions"], key=lambda p: p["partition"])]


def make_consumer(settings: Settings, **overrides: Any) -> AIOKafkaConsumer:
    options: dict[str, Any] = dict(
        **client_options(settings),
        group_id=settings.consumer_group,
        client_id=settings.worker_id,
        enable_auto_commit=False,  # offsets are committed inside the output transaction
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=settings.batch_max_records,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        max_poll_interval_ms=300_000,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        rebalance_timeout_ms=settings.rebalance_timeout_ms,
        group_instance_id=settings.group_instance_id,
    )
    options.update(overrides)
    return AIOKafkaConsumer(**options)


def make_transactional_producer(settings: Settings, transactional_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **client_options(settings),
        transactional_id=transactional_id,
        enable_idempotence=True,
        acks="all",
        # No linger: commit.py hands over whole batches (send_batch, one per output partition)
        # and then waits for them, so a linger only delays every transaction (bench/ab.py:
        # commit 17-22 ms against 27-33 at 1,000 earns/s; README, Benchmark)
        linger_ms=0,
        transaction_timeout_ms=settings.transaction_timeout_ms,
        max_request_size=settings.output_max_message_bytes,
        client_id=f"{settings.worker_id}-{transactional_id}",
    )


def partition_transactional_id(settings: Settings, topic: str, partition: int) -> str:
    """One transactional id per input partition: whoever owns the partition next fences
    the previous owner's producer and aborts its open transaction."""
    return f"{settings.consumer_group}.{topic}.{partition}"


def to_input(record: ConsumerRecord[bytes, bytes], settings: Settings,
             replay_secret: bytes | None = None) -> InputRecord:
    """The worker's view of a consumed record. Replay headers count only if they are signed
    with `replay_secret` (replay_marks.signing_key); without it they are ignored."""
    stream = Stream.CLAIMS if record.topic == settings.topic_claims else Stream.EARNS
    headers = tuple((str(k), bytes(v or b"")) for k, v in (record.headers or ()))
    return InputRecord(record.topic, record.partition, record.offset, record.key, record.value,
                       headers, record.timestamp, stream, replay_secret=replay_secret)


MAX_ERROR_HEADER = 1024  # characters of x-error-message / x-error-type
MAX_OUTCOME_BYTES = 512 * 1024  # an outcome bigger than this is cut down (well below Kafka's 1 MB)


def _text_header(text: str, limit: int = MAX_ERROR_HEADER) -> bytes:
    """Header text, bounded, as UTF-8 whatever it holds (a lone surrogate becomes U+FFFD)."""
    return _clean_text(clip(text, limit)).encode("utf-8")


def input_headers(record: InputRecord) -> Headers:
    """Where an output's command came from."""
    return [(K.H_INPUT_TOPIC, _text_header(record.topic, 512)),
            (K.H_INPUT_PARTITION, str(record.partition).encode()),
            (K.H_INPUT_OFFSET, str(record.offset).encode())]


def outcome_headers(record: InputRecord, span_id: str | None = None) -> Headers:
    """Headers of an outcome or event: where its command came from, and the command's W3C
    trace context (with the worker's span as parent when tracing is on)."""
    headers = input_headers(record)
    trace = record.trace
    if trace is not None:
        headers.extend(trace.headers(span_id))
    return headers


# Headers the DLQ copy writes itself; a producer's own values of them are not kept.
_DLQ_OWN_HEADERS = frozenset({K.H_INPUT_TOPIC, K.H_INPUT_PARTITION, K.H_INPUT_OFFSET, K.H_ERROR_CODE,
                              K.H_ERROR_MESSAGE, K.H_ERROR_TYPE, K.H_ORIGINAL_TIMESTAMP, K.H_REPLAY_OF,
                              K.H_REPLAY_SIGNATURE})


def dlq_headers(result: Result) -> Headers:
    """The input's own headers, then where it came from and why it failed.

    x-replay-of is written only for a replay whose mark verified, so a forged one never
    reaches `dlq replay`; x-original-timestamp is the first delivery's time (an integer)."""
    record = result.record
    # header names go out as UTF-8: one that cannot (a lone surrogate) is kept with U+FFFD
    kept = [(_clean_text(k), v) for k, v in record.headers if k not in _DLQ_OWN_HEADERS]
    errors = result.outcome.get("errors") or [{}]
    error = errors[0] if isinstance(errors[0], dict) else {}
    message = result.error_reason or str(error.get("message", ""))
    headers = [*kept, *input_headers(record),
               (K.H_ERROR_CODE, _text_header(str(error.get("code", "")), 16)),
               (K.H_ERROR_MESSAGE, _text_header(message))]
    if result.error_type:
        headers.append((K.H_ERROR_TYPE, _text_header(result.error_type, 256)))
    headers.append((K.H_ORIGINAL_TIMESTAMP, str(max(0, record.original_timestamp_ms)).encode()))  # -1: none
    if record.replay_mark is not None:
        headers.append((K.H_REPLAY_OF, _text_header(record.replay_mark.origin)))
    return headers


def encode(outcome: dict[str, Any]) -> bytes:
    """An outcome as UTF-8 JSON; never raises, and never more than about MAX_OUTCOME_BYTES.

    Lone surrogates (from JSON escapes in the input) become U+FFFD, non-finite numbers null,
    unknown types their str(). An outcome too big to publish is cut (long strings with a
    marker, long lists) and says so in its warnings."""
    too_big = False
    try:
        # orjson first (several times cheaper); it refuses what needs cleaning (lone surrogates,
        # integers beyond 64 bits, keys that are not strings) and writes NaN as null
        data = orjson.dumps(outcome)
        if len(data) <= MAX_OUTCOME_BYTES:
            return data
        too_big = True
    except (ValueError, TypeError, RecursionError):  # orjson.JSONEncodeError is a TypeError
        pass
    cleaned = _clean(outcome, depth=0)
    if not isinstance(cleaned, dict):
        cleaned = {"data": cleaned}
    if too_big:
        warnings = cleaned.get("warnings")
        cleaned["warnings"] = [*(warnings[:10] if isinstance(warnings, list) else []), _CUT]
    data = _dumps(cleaned)
    if len(data) <= MAX_OUTCOME_BYTES:
        return data
    # Still too big (a huge list, say): keep the envelope and the error, drop the data.
    errors = cleaned.get("errors")
    small = {k: cleaned.get(k) for k in ("type", "orgId", "requestId")}
    small.update(data=None, errors=[_clean(errors[0], 2, items=4)] if isinstance(errors, list) and errors else [],
                 warnings=[_CUT])
    return _dumps(small)


_CUT = "the outcome was too large to publish and was cut"


def encode_event(event: dict[str, Any]) -> bytes:
    """A notification event as UTF-8 JSON; never raises (what orjson refuses, e.g. a lone
    surrogate echoed from a referenceId, is cleaned as in `encode`). Events are small: every id
    in them is at most 1,024 characters."""
    try:
        return orjson.dumps(event)
    except (ValueError, TypeError, RecursionError):
        return _dumps(_clean(event, depth=0))


def event_key(event: dict[str, Any]) -> bytes | None:
    """CONTRACT.md section 7: events are keyed by customerId (its decimal text, as the earns
    topic's input key), so that one customer's events stay in order on one partition."""
    customer = (event.get("data") or {}).get("customerId")
    return None if customer is None else str(customer).encode()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _str(value: object) -> str:
    try:
        return str(value)
    except Exception:  # a broken __str__ must not stop an outcome
        return f"<{type(value).__name__}>"


def _clean_text(text: str) -> str:
    """`text` as UTF-8 can hold it: surrogate pairs joined, lone surrogates replaced by U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _clean(value: Any, depth: int, items: int = 1000) -> Any:
    """A JSON-safe copy of `value`: bounded strings, lists, dicts and depth."""
    if isinstance(value, str):
        return _clean_text(clip(value))
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if value.bit_length() < 64 else f"<an integer of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= 16:
        return "…"
    if isinstance(value, dict):
        return {_clean_text(clip(_str(k), 256)): _clean(v, depth + 1, items)
                for k, v in list(value.items())[:items]}
    if isinstance(value, list | tuple):
        return [_clean(v, depth + 1, items) for v in list(value)[:items]]
    return _clean_text(clip(_str(value)))
