"""A tiny HTTP endpoint: /healthz (alive), /readyz (processing normally), /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from badge_worker.metrics import REGISTRY


class HealthServer:
    def __init__(self, port: int, is_ready: Callable[[], bool], is_alive: Callable[[], bool] = lambda: True,
                 host: str = "0.0.0.0") -> None:
        self.port, self.host, self.is_ready, self.is_alive = port, host, is_ready, is_alive
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            path = request.split(b" ")[1].decode() if request.count(b" ") >= 2 else "/"
            if path.startswith("/metrics"):
                status, body, ctype = "200 OK", generate_latest(REGISTRY), CONTENT_TYPE_LATEST
            elif path.startswith("/readyz"):
                ready = self.is_ready()
                status = "200 OK" if ready else "503 Service Unavailable"
                body, ctype = (b"ready\n" if ready else b"not ready\n"), "text/plain"
            elif path.startswith("/healthz"):
                alive = self.is_alive()
                status = "200 OK" if alive else "503 Service Unavailable"
                body, ctype = (b"ok\n" if alive else b"consume loop stalled\n"), "text/plain"
            else:
                status, body, ctype = "404 Not Found", b"not found\n", "text/plain"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()
