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
    ServerSelectionTimeoutError,
    WriteConcernError,
)
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

INFRA_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, BusyLoadingError,
    ConnectionFailure, ServerSelectionTimeoutError, NetworkTimeout, ExecutionTimeout, NotPrimaryError,
    WriteConcernError,
    KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError,
    ConnectionError, TimeoutError, asyncio.TimeoutError,
)


def is_infra_error(exc: BaseException) -> bool:
    return isinstance(exc, INFRA_ERRORS)
