"""The worker's view of one Kafka record and of the outcome it produced."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from badge_worker import constants as K
from badge_worker import replay_marks, tracing
from badge_worker.domain import events
from badge_worker.domain.commands import Stream

# A Kafka timestamp in milliseconds that every date function can handle (years 1970..9999).
MAX_TIMESTAMP_MS = 253_402_300_799_999
_TIMESTAMP_TEXT = re.compile(r"[0-9]{1,15}")  # ASCII digits: int() would also take '١٢٣' and '1_000'


@dataclass(frozen=True)
class ReplayMark:
    """The replay headers of a record whose x-replay-signature verified."""

    origin: str  # x-replay-of: "topic/partition/offset" of the original message
    original_ts: str  # x-original-timestamp, as sent (may be absent: "")


@dataclass(frozen=True)
class InputRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int
    stream: Stream
    # The key that `dlq replay` signs its replay headers with; None: replay headers are never trusted.
    replay_secret: bytes | None = field(default=None, repr=False, compare=False)

    def header(self, name: str) -> str | None:
        """The first header of that name, as text (invalid UTF-8 replaced, never raises)."""
        for key, value in self.headers:
            if key == name:
                return bytes(value or b"").decode("utf-8", "replace")
        return None

    def _strict_header(self, name: str) -> str | None:
        """The only header of that name, if there is exactly one and it is valid UTF-8."""
        found = [value for key, value in self.headers if key == name]
        if len(found) != 1:
            return None
        try:
            return bytes(found[0] or b"").decode("utf-8")
        except UnicodeDecodeError:
            return None

    @cached_property
    def trace(self) -> tracing.TraceContext | None:
        """The producer's W3C trace context (traceparent/tracestate), if valid."""
        return tracing.parse(self.headers) if self.headers else None

    @cached_property
    def replay_mark(self) -> ReplayMark | None:
        """The replay headers, if `dlq replay` wrote them: their signature verifies under
        `replay_secret` (origin, original timestamp, key and value). Else None: a producer
        cannot make a new message pass for an earlier one by setting x-replay-of."""
        if not self.replay_secret:
            return None
        origin = self._strict_header(K.H_REPLAY_OF)
        signature = self._strict_header(K.H_REPLAY_SIGNATURE)
        if not origin or not signature:
            return None
        count = sum(1 for key, _ in self.headers if key == K.H_ORIGINAL_TIMESTAMP)
        original_ts = self._strict_header(K.H_ORIGINAL_TIMESTAMP) if count else ""
        if original_ts is None:  # repeated or not UTF-8
            return None
        try:
            valid = replay_marks.verify(self.replay_secret, signature, origin, original_ts, self.key, self.value)
        except (ValueError, TypeError):
            return None
        return ReplayMark(origin, original_ts) if valid else None

    @property
    def origin(self) -> str:
        """Where the message first entered: a (signed) DLQ replay names its original coordinates."""
        mark = self.replay_mark
        return mark.origin if mark is not None else f"{self.topic}/{self.partition}/{self.offset}"

    @property
    def original_timestamp_ms(self) -> int:
        """The Kafka timestamp of the first delivery: a signed replay's x-original-timestamp if
        it is a plain integer in range, else this record's own timestamp."""
        mark = self.replay_mark
        if mark is not None and _TIMESTAMP_TEXT.fullmatch(mark.original_ts):
            original = int(mark.original_ts)
            if original <= MAX_TIMESTAMP_MS:
                return original
        return self.timestamp_ms

    @property
    def now(self) -> float:
        """The message time (seconds): the original one for a replay."""
        return self.original_timestamp_ms / 1000.0


@dataclass
class Result:
    record: InputRecord
    # as stored and cached: the contract's outcome, plus its event under events.EVENT_KEY
    # (service/commit.py publishes the two apart)
    outcome: dict[str, Any]
    to_dlq: bool = False
    replayed: bool = False  # the stored first outcome was sent again
    ledger: Any = None  # the ledger entry (ObjectId) to store the outcome under
    # a successful earn: its outcome and event are built from the stored earned badge, which
    # answers any rerun the same, so no outcome document is stored (one write of four fewer)
    from_earned_badge: bool = False
    error_type: str | None = None  # a 500: the class of the exception of its last attempt
    error_reason: str | None = None  # and its message
    span_id: str | None = None  # the worker's OpenTelemetry span of this command (tracing.py), if any

    @property
    def event(self) -> dict[str, Any] | None:
        """The notification event that goes out with this outcome (domain/events.py), if any."""
        return events.split(self.outcome)[1]

    @property
    def ok(self) -> bool:
        return not self.outcome.get("errors")

    @property
    def code(self) -> int:
        errors = self.outcome.get("errors") or []
        return int(errors[0]["code"]) if errors else 200


def decided(results: Iterable[Result]) -> list[Result]:
    """The outcomes a run decided itself, kept for redeliveries (Redis caches every one): not
    replays, not 500s (a DLQ replay of a 500 is meant to run it again), and only commands
    with a ledger entry (a requestId) to keep them under."""
    return [r for r in results if r.ledger is not None and not r.replayed and r.code != 500]


def outcome_documents(decided: Iterable[Result]) -> list[tuple[Any, dict[str, Any], str]]:
    """What MongoDB stores of them: (ledger entry, outcome, origin). A successful earn is left
    out: every run of it builds its outcome from the earned badge stored first (resume.py),
    so its copies agree without a document of their own."""
    return [(r.ledger, r.outcome, r.record.origin) for r in decided if not r.from_earned_badge]
