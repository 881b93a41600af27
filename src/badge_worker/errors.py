"""Which exceptions mean 'infrastructure unavailable' (retry the batch with backoff) rather
than 'this message cannot be processed' (bounded retries, then 500 + DLQ)."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError
from pymongo.errors import (
    ConnectionFailure,
    ExecutionTimeout,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    ServerSelectionTimeoutError,
    WriteConcernError,
)
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from badge_worker.adapters.mongo_batch import is_transient_write_error

INFRA_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, BusyLoadingError,
    ConnectionFailure, ServerSelectionTimeoutError, NetworkTimeout, ExecutionTimeout, NotPrimaryError,
    WriteConcernError,
    KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError,
    ConnectionError, TimeoutError, asyncio.TimeoutError,
)


def is_infra_error(exc: BaseException) -> bool:
    if isinstance(exc, OperationFailure) and is_transient_write_error(str(exc)):
        return True  # FerretDB/SQLite busy: the store is there but overloaded
    return isinstance(exc, INFRA_ERRORS)
