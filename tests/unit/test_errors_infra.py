"""Outages are outages: which exceptions the worker treats as 'infrastructure unavailable'
(pause, back off, retry the partition batch) and which as 'this message failed' (bounded
retries, then 500 + DLQ). The exceptions are the client libraries' own, built the way the
libraries build them from server replies wherever that can be done without a server."""

from __future__ import annotations

import inspect
import socket
from collections.abc import Callable
from typing import Any

import aiokafka.errors as kafka_errors
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.producer.transaction_manager import TransactionManager
from pydantic import BaseModel, ValidationError
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    CursorNotFound,
    DocumentTooLarge,
    DuplicateKeyError,
    ExecutionTimeout,
    InvalidOperation,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    ServerSelectionTimeoutError,
    WaitQueueTimeoutError,
    WriteConcernError,
    WriteError,
    WTimeoutError,
)
from pymongo.helpers_shared import _check_command_response
from redis._parsers.base import BaseParser
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    DataError,
    MasterDownError,
    MaxConnectionsError,
    MovedError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from badge_worker.errors import InfrastructureUnavailable, infra_kind, is_infra_error, is_kafka_infra_error

# ---------------------------------------------------------------- Redis


def redis_reply_error(reply: str) -> Exception:
    """The exception redis-py raises for the error reply `-<reply>` (its own parser)."""
    parse: Callable[[str], Exception] = BaseParser.parse_error
    exc = parse(reply)
    assert isinstance(exc, Exception)
    return exc


REDIS_SERVER_STATE_REPLIES = [
    "OOM command not allowed when used memory > 'maxmemory'.",
    # as a redis.call inside EVALSHA reports it (Redis 7: the code is kept, the script named)
    "OOM command not allowed when used memory > 'maxmemory'. script: 4843eee6a2ab742effa737674b6b3e7be621a35d, "
    "on @user_script:72.",
    "READONLY You can't write against a read only replica.",
    "READONLY You can't write against a read only replica. script: 4843eee6a2ab742effa737674b6b3e7be621a35d, "
    "on @user_script:72.",
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "LOADING Redis is loading the dataset in memory",
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "CLUSTERDOWN The cluster is down",
    "MOVED 3999 127.0.0.1:6381",
    "ASK 3999 127.0.0.1:6381",
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
    "NOREPLICAS Not enough good replicas to write.",
    "NOSCRIPT No matching script. Please use EVAL.",
    "NOPERM User default has no permissions to run the 'evalsha' command",
    "ERR max number of clients reached",
    "ERR Error running script (call to f_1): @user_script:1: Script killed by user with SCRIPT KILL...",
]


@pytest.mark.parametrize("reply", REDIS_SERVER_STATE_REPLIES)
def test_redis_server_state_replies_are_infrastructure(reply: str) -> None:
    exc = redis_reply_error(reply)
    assert is_infra_error(exc), (type(exc).__name__, str(exc))
    assert infra_kind(exc) == "redis"


def test_redis_py_maps_the_common_ones_to_classes() -> None:
    assert isinstance(redis_reply_error("OOM command not allowed"), OutOfMemoryError)
    assert isinstance(redis_reply_error("READONLY You can't write"), ReadOnlyError)
    assert isinstance(redis_reply_error("MASTERDOWN Link with MASTER is down"), MasterDownError)
    assert isinstance(redis_reply_error("CLUSTERDOWN The cluster is down"), ClusterDownError)
    assert isinstance(redis_reply_error("TRYAGAIN x"), TryAgainError)
    assert isinstance(redis_reply_error("MOVED 1 127.0.0.1:1"), MovedError)
    assert isinstance(redis_reply_error("LOADING x"), BusyLoadingError)
    # BUSY, MISCONF and NOREPLICAS are not: a plain ResponseError whose message keeps the code
    busy = redis_reply_error("BUSY Redis is busy running a script.")
    assert type(busy) is ResponseError and str(busy).startswith("BUSY")


REDIS_MESSAGE_REPLIES = [
    "ERR Error running script (call to f_ab): @user_script:12: user_script:12: attempt to compare nil with number",
    "ERR user_script:1: Script attempted to access nonexistent global variable 'x' script: 88c9, on @user_script:1.",
    "WRONGTYPE Operation against a key holding the wrong kind of value",
    "ERR value is not an integer or out of range",
    "ERR wrong number of arguments for 'evalsha' command",
    "CROSSSLOT Keys in request don't hash to the same slot",
    "EXECABORT Transaction discarded because of previous errors.",
]


@pytest.mark.parametrize("reply", REDIS_MESSAGE_REPLIES)
def test_redis_errors_about_the_command_are_not_infrastructure(reply: str) -> None:
    exc = redis_reply_error(reply)
    assert not is_infra_error(exc), (type(exc).__name__, str(exc))


@pytest.mark.parametrize("exc", [
    RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
    RedisTimeoutError("Timeout reading from socket"),
    BusyLoadingError("Redis is loading the dataset in memory"),
    MaxConnectionsError("Too many connections"),
    AuthenticationError("invalid username-password pair"),
    SlotNotCoveredError("Command # 1 (EVALSHA) is not covered by any node"),
])
def test_redis_client_side_failures_are_infrastructure(exc: Exception) -> None:
    assert infra_kind(exc) == "redis"


def test_redis_data_error_is_a_message_error() -> None:
    assert not is_infra_error(DataError("Invalid input of type: 'dict'"))


# ---------------------------------------------------------------- MongoDB


def mongo_reply_error(reply: dict[str, Any]) -> Exception:
    """The exception PyMongo raises for a command reply with ok: 0 (its own checker)."""
    try:
        _check_command_response({"ok": 0, **reply}, max_wire_version=21)
    except Exception as exc:
        return exc
    raise AssertionError("not an error reply")


MONGO_SERVER_STATE_REPLIES = [
    {"code": 91, "codeName": "ShutdownInProgress", "errmsg": "The server is in quiesce mode and will shut down"},
    {"code": 11600, "codeName": "InterruptedAtShutdown", "errmsg": "interrupted at shutdown"},
    {"code": 10107, "codeName": "NotWritablePrimary", "errmsg": "not primary"},
    {"code": 13435, "codeName": "NotPrimaryNoSecondaryOk", "errmsg": "not primary and secondaryOk=false"},
    {"code": 189, "codeName": "PrimarySteppedDown", "errmsg": "primary stepped down"},
    {"code": 11602, "codeName": "InterruptedDueToReplStateChange", "errmsg": "operation was interrupted"},
    {"code": 6, "codeName": "HostUnreachable", "errmsg": "host unreachable"},
    {"code": 7, "codeName": "HostNotFound", "errmsg": "host not found"},
    {"code": 89, "codeName": "NetworkTimeout", "errmsg": "network timeout"},
    {"code": 9001, "codeName": "SocketException", "errmsg": "socket exception"},
    {"code": 262, "codeName": "ExceededTimeLimit", "errmsg": "exceeded time limit"},
    {"code": 50, "codeName": "MaxTimeMSExpired", "errmsg": "operation exceeded time limit"},
    {"code": 43, "codeName": "CursorNotFound", "errmsg": "cursor id 42 not found"},
    {"code": 112, "codeName": "WriteConflict", "errmsg": "write conflict"},
    {"code": 1, "codeName": "InternalError", "errmsg": "database is locked (5) (SQLITE_BUSY)"},  # FerretDB
    {"code": 2, "codeName": "BadValue", "errmsg": "x", "errorLabels": ["RetryableWriteError"]},
    {"code": 2, "codeName": "BadValue", "errmsg": "x", "errorLabels": ["SystemOverloadedError", "RetryableError"]},
]


@pytest.mark.parametrize("reply", MONGO_SERVER_STATE_REPLIES, ids=lambda r: f"{r['code']}-{r['codeName']}")
def test_mongodb_server_state_replies_are_infrastructure(reply: dict[str, Any]) -> None:
    exc = mongo_reply_error(reply)
    assert infra_kind(exc) == "mongodb", (type(exc).__name__, str(exc))


def test_pymongo_raises_not_primary_and_shutdown_replies_as_its_reconnect_errors() -> None:
    assert isinstance(mongo_reply_error(MONGO_SERVER_STATE_REPLIES[0]), NotPrimaryError)
    assert isinstance(mongo_reply_error(MONGO_SERVER_STATE_REPLIES[12]), CursorNotFound)


MONGO_MESSAGE_REPLIES = [
    {"code": 2, "codeName": "BadValue", "errmsg": "unknown operator: $foo"},
    {"code": 14, "codeName": "TypeMismatch", "errmsg": "wrong type"},
    {"code": 11000, "codeName": "DuplicateKey", "errmsg": "E11000 duplicate key error"},
    {"code": 1, "codeName": "InternalError", "errmsg": "nested arrays are not supported"},
    {"code": 17124, "codeName": "Location17124", "errmsg": "bad"},
]


@pytest.mark.parametrize("reply", MONGO_MESSAGE_REPLIES, ids=lambda r: r["codeName"])
def test_mongodb_replies_about_the_document_are_not_infrastructure(reply: dict[str, Any]) -> None:
    assert not is_infra_error(mongo_reply_error(reply))


@pytest.mark.parametrize("exc", [
    AutoReconnect("127.0.0.1:27017: connection closed"),
    AutoReconnect("127.0.0.1:27017: [Errno 104] Connection reset by peer"),
    NetworkTimeout("127.0.0.1:27017: timed out (configured timeouts: socketTimeoutMS: 30000.0ms)"),
    ServerSelectionTimeoutError("127.0.0.1:27017: [Errno 111] Connection refused, Timeout: 5.0s"),
    NotPrimaryError("not primary", {"code": 10107}),
    WaitQueueTimeoutError("Timed out while checking out a connection from connection pool"),
    ExecutionTimeout("operation exceeded time limit", 50),
    WriteConcernError("waiting for replication timed out", 64),
    WTimeoutError("waiting for replication timed out", 64),
    InvalidOperation("Cannot use AsyncMongoClient after close"),
])
def test_mongodb_client_side_failures_are_infrastructure(exc: Exception) -> None:
    assert infra_kind(exc) == "mongodb"


def bulk_error(*write_errors: dict[str, Any], concern: list[dict[str, Any]] | None = None) -> BulkWriteError:
    return BulkWriteError({"writeErrors": [{"index": i, "op": {"_id": i}, **e} for i, e in enumerate(write_errors)],
                           "writeConcernErrors": concern or [], "nInserted": 0, "nUpserted": 0, "nMatched": 0,
                           "nModified": 0, "nRemoved": 0, "upserted": []})


def test_bulk_write_errors_carrying_server_state_are_infrastructure() -> None:
    assert is_infra_error(bulk_error({"code": 91, "errmsg": "shutdown in progress"}))
    assert is_infra_error(bulk_error({"code": 11000, "errmsg": "E11000"}, {"code": 11600, "errmsg": "interrupted"}))
    assert is_infra_error(bulk_error({"code": 1, "errmsg": "database is locked"}))
    assert is_infra_error(bulk_error(concern=[{"code": 64, "errmsg": "waiting for replication timed out"}]))
    assert is_infra_error(bulk_error({"code": 2, "errmsg": "x", "errorLabels": ["RetryableWriteError"]}))
    assert not is_infra_error(bulk_error({"code": 11000, "errmsg": "E11000 duplicate key"}))
    assert not is_infra_error(bulk_error({"code": 2, "errmsg": "bad value"}))


def test_write_errors_as_the_write_batcher_hands_them_out() -> None:
    """mongo_batch turns each failed document of an insert_many into its own WriteError."""
    cases: list[tuple[dict[str, Any], bool]] = [({"code": 91, "errmsg": "shutdown in progress"}, True),
                       ({"code": 6, "errmsg": "host unreachable"}, True),
                       ({"code": 1, "errmsg": "SQLITE_BUSY"}, True),
                       ({"code": 11000, "errmsg": "E11000 duplicate key"}, False),
                       ({"code": 2, "errmsg": "bad"}, False)]
    for err, infra in cases:
        assert is_infra_error(WriteError(err["errmsg"], err["code"], {"index": 0, **err})) is infra, err
    assert not is_infra_error(DuplicateKeyError("E11000 duplicate key", 11000, {"code": 11000}))


def test_document_errors_are_not_infrastructure() -> None:
    assert not is_infra_error(DocumentTooLarge("BSON document too large"))
    assert not is_infra_error(InvalidOperation("cannot set options after executing query"))
    assert not is_infra_error(OperationFailure("unknown", 2))


# ---------------------------------------------------------------- Kafka

KAFKA_ERROR_CLASSES = sorted(
    (c for _, c in inspect.getmembers(kafka_errors, inspect.isclass)
     if issubclass(c, kafka_errors.KafkaError) and c is not kafka_errors.KafkaError),
    key=lambda c: c.__name__)


def test_every_retriable_kafka_error_is_among_them() -> None:
    retriable = {c for c in KAFKA_ERROR_CLASSES if getattr(c, "retriable", False)}
    assert {kafka_errors.NotLeaderForPartitionError, kafka_errors.UnknownTopicOrPartitionError,
            kafka_errors.KafkaConnectionError, kafka_errors.NodeNotReadyError,
            kafka_errors.RequestTimedOutError, kafka_errors.CoordinatorNotAvailableError} <= retriable


@pytest.mark.parametrize("cls", KAFKA_ERROR_CLASSES, ids=lambda c: c.__name__)
def test_kafka_errors_are_infrastructure(cls: type[Exception]) -> None:
    """Every KafkaError is about the broker, the transport or the client's state: the input
    was read already, and outcomes are produced by the worker itself."""
    exc = cls("broker said no")
    assert infra_kind(exc) == "kafka"
    assert is_kafka_infra_error(exc)


async def test_aiokafka_state_errors_that_are_not_kafka_errors() -> None:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", transactional_id="t-1")
    with pytest.raises(kafka_errors.IllegalOperation) as outside:
        await producer.send_offsets_to_transaction({TopicPartition("t", 0): 1}, "g")
    assert not isinstance(outside.value, kafka_errors.KafkaError)
    assert infra_kind(outside.value) == "kafka"
    assert infra_kind(kafka_errors.ConsumerStoppedError()) == "kafka"
    # the transaction manager's state checks are assertions inside aiokafka
    manager = TransactionManager("t-1", 60_000)
    with pytest.raises(AssertionError) as invalid:
        manager.committing_transaction()
    assert is_infra_error(invalid.value)
    assert is_kafka_infra_error(invalid.value)


def test_an_assertion_of_our_own_is_not_infrastructure() -> None:
    with pytest.raises(AssertionError) as ours:
        assert 1 + 1 == 3
    assert not is_infra_error(ours.value)


def test_producer_fenced_and_closed() -> None:
    assert is_kafka_infra_error(kafka_errors.ProducerFenced())
    assert is_kafka_infra_error(kafka_errors.ProducerClosed())
    assert is_kafka_infra_error(kafka_errors.IllegalStateError("No partitions assigned"))
    assert not is_kafka_infra_error(AutoReconnect("x"))  # infra, but not Kafka's


# ---------------------------------------------------------------- the OS


@pytest.mark.parametrize("exc", [
    OSError(113, "No route to host"), ConnectionRefusedError(111, "Connection refused"),
    ConnectionResetError(104, "Connection reset by peer"), BrokenPipeError(32, "Broken pipe"),
    TimeoutError(), TimeoutError('asyncio.wait_for'), socket.gaierror(-2, "Name or service not known"),
])
def test_os_level_failures_are_infrastructure(exc: Exception) -> None:
    assert infra_kind(exc) == "network"


class _Model(BaseModel):
    n: int


def _validation_error() -> ValidationError:
    try:
        _Model.model_validate({"n": "x"})
    except ValidationError as exc:
        return exc
    raise AssertionError


@pytest.mark.parametrize("exc", [
    ValueError("bad date"), KeyError("customerId"), TypeError("unsupported operand"), ZeroDivisionError(),
    RuntimeError("boom"), _validation_error(),
])
def test_bugs_and_bad_data_are_message_errors(exc: Exception) -> None:
    assert not is_infra_error(exc)
    assert infra_kind(exc) is None


# ---------------------------------------------------------------- causes, contexts, groups


def _reserve_failed_from_oom() -> None:
    try:
        raise OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    except OutOfMemoryError as oom:
        raise RuntimeError("reserve failed") from oom


def _bug_while_handling_an_outage() -> None:
    try:
        raise AutoReconnect("connection closed")
    except AutoReconnect:
        raise KeyError("raised while handling the outage")  # noqa: B904


def _unrelated_from_none() -> None:
    try:
        raise AutoReconnect("connection closed")
    except AutoReconnect:
        raise ValueError("unrelated") from None


def test_the_cause_is_followed() -> None:
    with pytest.raises(RuntimeError) as caught:
        _reserve_failed_from_oom()
    assert infra_kind(caught.value) == "redis"


def test_the_context_is_followed() -> None:
    with pytest.raises(KeyError) as caught:
        _bug_while_handling_an_outage()
    assert caught.value.__context__ is not None
    assert infra_kind(caught.value) == "mongodb"


def test_a_context_suppressed_with_from_none_is_not_followed() -> None:
    with pytest.raises(ValueError, match="unrelated") as caught:
        _unrelated_from_none()
    assert not is_infra_error(caught.value)


def test_exception_groups_are_searched_at_any_depth() -> None:
    inner = ExceptionGroup("entities", [ValueError("bad"), ExceptionGroup("deeper", [
        kafka_errors.NotLeaderForPartitionError()])])
    group = ExceptionGroup("batch", [KeyError("x"), inner])
    assert infra_kind(group) == "kafka"
    assert is_kafka_infra_error(group)
    assert not is_infra_error(ExceptionGroup("batch", [ValueError("a"), KeyError("b")]))


def test_a_cycle_of_contexts_ends() -> None:
    a, b = ValueError("a"), KeyError("b")
    a.__context__, b.__context__ = b, a
    assert not is_infra_error(a)
    b.__cause__ = ReadOnlyError("You can't write against a read only replica.")
    assert infra_kind(a) == "redis"


def test_our_own_marker_for_server_state() -> None:
    class CountersLost(InfrastructureUnavailable):
        pass

    assert infra_kind(CountersLost("badge counters could not be rebuilt")) == "state"
    assert not is_kafka_infra_error(CountersLost("x"))
