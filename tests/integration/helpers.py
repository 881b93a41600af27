"""Shared pieces of the end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from badge_worker.adapters.mongo import Repositories
from badge_worker.domain.models import BadgeDefinition
from badge_worker.service.worker import Worker
from badge_worker.settings import Settings

ORG = 100458
DAY = 86_400.0


def live_badge(badge_id: str, **extra: Any) -> BadgeDefinition:
    now = time.time()
    body: dict[str, Any] = {"id": badge_id, "orgId": ORG, "startOn": now - 30 * DAY, "expiresOn": now + 365 * DAY,
                            "earnType": "EARN", "active": True}
    body.update(extra)
    return BadgeDefinition.model_validate(body)


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[Worker]:
    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)


async def load(repos: Repositories, *badges: BadgeDefinition) -> None:
    for badge in badges:
        await repos.upsert_badge(badge)
