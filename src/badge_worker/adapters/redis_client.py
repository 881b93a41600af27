"""The Redis client of the worker and the operator tools: one server, or a Redis Cluster
(REDIS_CLUSTER=true) through redis-py's cluster client, which follows MOVED/ASK redirects
and sends each pipelined command to the node of its key's slot.

Every key one Lua call touches shares the hash tag {org:badge} and is declared in KEYS, so a
script runs on the one node that serves the badge's slot (constants.py).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster

from badge_worker.settings import Settings

RedisClient = Redis | RedisCluster


def connect(settings: Settings, *, max_connections: int | None = None) -> Any:
    """A client for settings.redis_url (typed Any: the two clients share their command API)."""
    limit = max_connections or settings.redis_max_connections
    timeouts: dict[str, Any] = {"socket_timeout": 10, "socket_connect_timeout": 5}
    if settings.redis_cluster:
        # per node; pipelines take one connection per node they reach
        return RedisCluster.from_url(settings.redis_url, max_connections=limit, **timeouts)
    # A blocking pool: when every connection is busy, callers wait (backpressure) instead of failing.
    pool = BlockingConnectionPool.from_url(settings.redis_url, max_connections=limit, timeout=30,
                                           health_check_interval=15, **timeouts)
    return Redis(connection_pool=pool)


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)
