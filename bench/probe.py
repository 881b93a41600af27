"""Round trips to the servers from a process of its own, while a bench phase loads them:
a Redis PING, a MongoDB ping and an insert_many of 8 small documents (about one batch's
ledger entries), one after the other every 10 ms, until stdin closes; then one JSON line of
p50 / p99 milliseconds per probe. Its own process, because the bench's publisher and
collector keep the bench's event loop busy enough to double what a probe there would see.

    .venv/bin/python bench/probe.py REDIS_URL MONGODB_URI DATABASE < /dev/tty
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any

from pymongo import AsyncMongoClient
from redis.asyncio import Redis


async def probe(redis_url: str, mongodb_uri: str, database: str) -> dict[str, tuple[float, float]]:
    redis = Redis.from_url(redis_url)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
    scratch = client[database]["bench_probe"]
    loop = asyncio.get_running_loop()
    closed = loop.run_in_executor(None, sys.stdin.read)  # the bench closes our stdin to stop us
    times: dict[str, list[float]] = {"Redis PING": [], "MongoDB ping": [], "MongoDB insert of 8": []}
    try:
        while not closed.done():
            t0 = time.perf_counter()
            await redis.ping()
            t1 = time.perf_counter()
            await client.admin.command("ping")
            t2 = time.perf_counter()
            await scratch.insert_many([{"n": i} for i in range(8)])
            t3 = time.perf_counter()
            for name, took in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                times[name].append(took * 1000)
            await asyncio.sleep(0.01)
    finally:
        await client.close()
        await redis.aclose()
    return {name: (statistics.median(v), sorted(v)[min(len(v) - 1, int(len(v) * 0.99))])
            for name, v in times.items() if v}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(probe(*sys.argv[1:4]))), flush=True)
