"""Which exceptions mean 'infrastructure unavailable' (retry the batch with backoff) rather
than 'this message cannot be processed' (bounded retries, then 500 + DLQ).

An outage is an outage: every Redis, MongoDB or Kafka failure that is about the server (down,
restarting, out of memory, read-only after a failover, busy, paused, not primary, shutting
down, a broken connection, a client left in a bad state by one of these) is infrastructure,
whichever way the client library reports it — as its own exception class, as a generic
"response error" carrying the server's error code, inside a bulk write's per-document
errors, or as the cause, context or group member of another exception. Only what retrying
cannot fix stays a message error (a Lua script error, a duplicate key, a document too large,
a bug).
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator, Mapping
from typing import Any

from aiokafka.errors import ConsumerStoppedError, IllegalOperation, KafkaError
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    ExecutionTimeout,
    InvalidOperation,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)
from redis.exceptions import (
    AskError,
    ClusterError,
    InvalidResponse,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from badge_worker.adapters.mongo_batch import is_transient_write_error


class InfrastructureUnavailable(RuntimeError):
    """Raise (or subclass) this for a failure that is about the servers' state although no
    client library reported one, e.g. counters that could not be rebuilt because Redis keeps
    losing them: the batch is retried with backoff instead of ending as a 500."""


# ---------------------------------------------------------------- Redis

REDIS_INFRA_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,  # also BusyLoadingError (LOADING), MaxConnectionsError, "max number of clients"
    RedisTimeoutError,  # a server that does not answer in time (CLIENT PAUSE, SIGSTOP, overload)
    InvalidResponse,  # a reply stream left broken by a dropped connection
    OutOfMemoryError,  # OOM: maxmemory reached with noeviction
    ReadOnlyError,  # READONLY: a replica now (failover, REPLICAOF)
    ClusterError,  # ClusterDownError (CLUSTERDOWN) and MasterDownError (MASTERDOWN)
    TryAgainError,  # TRYAGAIN: keys of a slot being migrated
    AskError,  # ASK/MOVED: slots moving (a redirect storm)
    SlotNotCoveredError,  # a slot without a node while the cluster reshards
    NoScriptError,  # the script cache was flushed between redis-py's SCRIPT LOAD and EVALSHA
    NoPermissionError,  # NOPERM: the server's ACLs (configuration) deny the command; as for a wrong password
)

#: Leading codes of Redis error replies that describe the server's state, not the command.
#: redis-py maps some to classes (above); the others arrive as a plain ResponseError whose
#: message starts with the code (also when raised by a redis.call inside a Lua script).
REDIS_INFRA_CODES = frozenset({
    "OOM", "READONLY", "LOADING", "BUSY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK",
    "MISCONF",  # persistence failing: writes refused until it works again
    "NOREPLICAS",  # min-replicas-to-write not met
    "NOSCRIPT", "NOPERM",
})
REDIS_INFRA_MESSAGES = (
    "max number of clients reached",
    "Script killed by user",  # an operator's SCRIPT KILL of a script that was taking too long
    "command not allowed when used memory",
    "You can't write against a read only replica",
)


def _redis_infra(exc: BaseException) -> bool:
    if isinstance(exc, REDIS_INFRA_ERRORS):
        return True
    if isinstance(exc, ResponseError):
        code = getattr(exc, "status_code", None)
        if isinstance(code, str) and code.upper() in REDIS_INFRA_CODES:
            return True
        message = str(exc)
        first = message.split(" ", 1)[0]
        if first in REDIS_INFRA_CODES:
            return True
        return any(marker in message for marker in REDIS_INFRA_MESSAGES)
    return False


# ---------------------------------------------------------------- MongoDB

#: Server error codes that mean 'not now', from the server's error catalogue: the drivers'
#: retryable-writes set (not primary, node recovering, shutting down, network) and more.
MONGO_INFRA_CODES = frozenset({
    6,  # HostUnreachable
    7,  # HostNotFound
    24,  # LockTimeout
    43,  # CursorNotFound (the server restarted under an open cursor)
    46,  # LockBusy
    50,  # MaxTimeMSExpired
    89,  # NetworkTimeout
    91,  # ShutdownInProgress
    112,  # WriteConflict
    134,  # ReadConcernMajorityNotAvailableYet
    175,  # QueryPlanKilled
    189,  # PrimarySteppedDown
    202,  # NetworkInterfaceExceededTimeLimit
    237,  # CursorKilled
    262,  # ExceededTimeLimit
    9001,  # SocketException
    10058,  # LegacyNotPrimary
    10107,  # NotWritablePrimary
    11600,  # InterruptedAtShutdown
    11601,  # Interrupted
    11602,  # InterruptedDueToReplStateChange
    13435,  # NotPrimaryNoSecondaryOk
    13436,  # NotPrimaryOrSecondary
    16500,  # ExceededRequestRate (Azure Cosmos' 429)
})
MONGO_INFRA_LABELS = ("RetryableWriteError", "TransientTransactionError", "NetworkError",
                      "SystemOverloadedError", "RetryableError", "ResumableChangeStreamError")
MONGO_INFRA_CODE_NAMES = frozenset({
    "HostUnreachable", "HostNotFound", "NetworkTimeout", "ShutdownInProgress", "InterruptedAtShutdown",
    "NotWritablePrimary", "NotPrimaryNoSecondaryOk", "NotPrimaryOrSecondary", "PrimarySteppedDown",
    "InterruptedDueToReplStateChange", "SocketException", "ExceededTimeLimit", "LockTimeout", "LockBusy",
    "WriteConflict",
})


def _mongo_error_doc_infra(doc: Mapping[str, Any]) -> bool:
    """One server error document: a write error, a write concern error or a reply."""
    code = doc.get("code")
    if isinstance(code, int) and code in MONGO_INFRA_CODES:
        return True
    if doc.get("codeName") in MONGO_INFRA_CODE_NAMES:
        return True
    labels = doc.get("errorLabels") or ()
    if any(label in MONGO_INFRA_LABELS for label in labels):
        return True
    return is_transient_write_error(str(doc.get("errmsg", "")))


def _mongo_infra(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionFailure, ExecutionTimeout, WriteConcernError)):
        return True  # AutoReconnect, NetworkTimeout, NotPrimaryError, ServerSelectionTimeoutError...
    if isinstance(exc, InvalidOperation):
        return "after close" in str(exc)  # the client was closed under the operation
    if isinstance(exc, PyMongoError) and any(exc.has_error_label(label) for label in MONGO_INFRA_LABELS):
        return True
    if not isinstance(exc, OperationFailure):
        return False
    if isinstance(exc, BulkWriteError):
        bulk: Mapping[str, Any] = exc.details or {}
        if bulk.get("writeConcernErrors"):
            return True
        if any(_mongo_error_doc_infra(err) for err in bulk.get("writeErrors", ())):
            return True
    if exc.code in MONGO_INFRA_CODES:
        return True
    reply = exc.details
    if isinstance(reply, Mapping) and _mongo_error_doc_infra(reply):
        return True
    return is_transient_write_error(str(exc))  # FerretDB/SQLite busy: the store is there but overloaded


# ---------------------------------------------------------------- Kafka

def _kafka_infra(exc: BaseException) -> bool:
    # Every KafkaError is about the broker, the transport or the client's state (retriable
    # ones, fenced or aborted transactions, a closed producer, a coordinator moving), never
    # about the input message, which was already read; so are aiokafka's two plain-Exception
    # errors, and the state assertions of its transaction manager.
    if isinstance(exc, (KafkaError, IllegalOperation, ConsumerStoppedError)):
        return True
    if isinstance(exc, AssertionError) and exc.__traceback__ is not None:
        frames = traceback.extract_tb(exc.__traceback__)
        return bool(frames) and "/aiokafka/" in frames[-1].filename.replace("\\", "/")
    return False


# ---------------------------------------------------------------- any of them

def infra_kind(exc: BaseException) -> str | None:
    """'redis', 'mongodb', 'kafka', 'network' or 'state' (InfrastructureUnavailable) when `exc`
    (or its cause, its context, a member of its group) is an infrastructure failure; else None."""
    for item in _chain(exc):
        if isinstance(item, InfrastructureUnavailable):
            return "state"
        if _redis_infra(item):
            return "redis"
        if _mongo_infra(item):
            return "mongodb"
        if _kafka_infra(item):
            return "kafka"
        if isinstance(item, (OSError, TimeoutError)):  # ConnectionError, socket errors, asyncio timeouts
            return "network"
    return None


def is_infra_error(exc: BaseException) -> bool:
    return infra_kind(exc) is not None


def is_kafka_infra_error(exc: BaseException) -> bool:
    """A Kafka client failure anywhere in `exc`: its producer should be started afresh."""
    return any(_kafka_infra(item) for item in _chain(exc))


def _chain(exc: BaseException, limit: int = 64) -> Iterator[BaseException]:
    """`exc`, then its group members, explicit causes and implicit contexts (depth first;
    a context suppressed by `raise ... from None` is left out)."""
    seen: set[int] = set()
    stack = [exc]
    while stack and len(seen) < limit:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        nested: list[BaseException] = []
        if isinstance(item, BaseExceptionGroup):
            nested.extend(item.exceptions)
        if item.__cause__ is not None:
            nested.append(item.__cause__)
        if item.__context__ is not None and not item.__suppress_context__:
            nested.append(item.__context__)
        stack.extend(reversed(nested))

