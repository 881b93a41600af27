"""`badge-worker api`: uvicorn serving the read API until SIGTERM/SIGINT, then a graceful
stop (no new connections; requests in flight finish within API_SHUTDOWN_GRACE_S)."""

from __future__ import annotations

import signal

import uvicorn

from badge_worker.api.app import create_app
from badge_worker.settings import Settings


def serve(settings: Settings) -> None:
    config = uvicorn.Config(create_app(settings), host=settings.api_host, port=settings.api_port,
                            log_config=None,  # the root logger already writes structlog JSON
                            access_log=False,  # the app logs each request itself, with its org
                            timeout_graceful_shutdown=int(settings.api_shutdown_grace_s), lifespan="on")
    # uvicorn stops gracefully on SIGTERM/SIGINT, then raises the signal again under the
    # handlers it found: a no-op one here, so a drained API exits 0 like the worker does
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.Server(config).run()
