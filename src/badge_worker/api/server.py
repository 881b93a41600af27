"""`badge-worker api`: uvicorn serving the read API until SIGTERM/SIGINT, then a graceful
stop (no new connections; requests in flight finish within API_SHUTDOWN_GRACE_S)."""

from __future__ import annotations

import uvicorn

from badge_worker.api.app import create_app
from badge_worker.settings import Settings


def serve(settings: Settings) -> None:
    config = uvicorn.Config(create_app(settings), host=settings.api_host, port=settings.api_port,
                            log_config=None,  # the root logger already writes structlog JSON
                            access_log=False,  # the app logs each request itself, with its org
                            timeout_graceful_shutdown=int(settings.api_shutdown_grace_s), lifespan="on")
    uvicorn.Server(config).run()
