"""structlog as JSON lines on stderr; per-message context (requestId, orgId, Kafka
coordinates) is bound with contextvars so every line of a message carries it.

Libraries that log through the standard `logging` module (aiokafka, asyncio, pymongo) go
through the same JSON renderer, so every line on stderr is one JSON object; a library line
repeated within REPEAT_WINDOW_S is dropped and the next one says how many were, and the
transient errors aiokafka retries itself come out as warnings with the reason."""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

import structlog
from structlog.typing import EventDict, Processor

# The message being processed (requestId, orgId, Kafka coordinates): one contextvar set per
# message (binding six structlog contextvars per message cost ~4% of the worker's CPU).
MESSAGE: ContextVar[dict[str, Any] | None] = ContextVar("badge_worker_message", default=None)


def merge_message(_logger: Any, _name: str, event: EventDict) -> EventDict:
    fields = MESSAGE.get()
    if fields:
        for key, value in fields.items():
            event.setdefault(key, value)
    return event


_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    merge_message,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


# aiokafka logs these at ERROR although it retries them itself, and they are normal for a few
# seconds (a new group's coordinator being elected, a broker restarting): warnings, with why.
# Matched by the message template, and only when the error is one Kafka calls retriable.
_RETRIED_BY_AIOKAFKA = {
    "Group Coordinator Request failed: %s": "aiokafka retries: the group coordinator is not elected yet",
    "Heartbeat send request failed: %s. Will retry.": "aiokafka retries the heartbeat",
}
REPEAT_WINDOW_S = 30.0  # one line per library message template per window; the next says how many were dropped


class LibraryNoise(logging.Filter):
    """Rate-limits and downgrades library (stdlib logging) lines; the worker's own structlog
    lines never pass through here."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self.seen: dict[tuple[str, int, str], list[float]] = {}  # -> [window start, lines dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        reason = _RETRIED_BY_AIOKAFKA.get(str(record.msg))
        if (reason and record.levelno > logging.WARNING and record.args and isinstance(record.args, tuple)
                and getattr(record.args[0], "retriable", False)):
            record.downgraded_from = record.levelname.lower()
            record.reason = reason
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        entry = self.seen.get(key)
        if entry is not None and now - entry[0] < self.window_s:
            entry[1] += 1
            return False
        if entry is not None and entry[1]:
            record.suppressed = int(entry[1])  # similar lines dropped in the window before this one
        if len(self.seen) > 1000:  # bounded memory whatever the libraries log
            self.seen.clear()
        self.seen[key] = [now, 0]
        return True


def configure(level: str = "INFO") -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, structlog.stdlib.add_logger_name,
                           structlog.stdlib.ExtraAdder(allow=["suppressed", "downgraded_from", "reason"])],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
    ))
    handler.addFilter(LibraryNoise())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries are chatty at INFO (every connection, every rebalance step): warnings and up.
    root.setLevel(max(numeric, logging.WARNING))
    structlog.configure(
        processors=[*_SHARED, structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
