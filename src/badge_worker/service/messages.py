"""The worker's view of one Kafka record and of the outcome it produced."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from badge_worker import constants as K
from badge_worker.domain.commands import Stream


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

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("utf-8", "replace")
        return None

    @property
    def origin(self) -> str:
        """Where the message first entered: a DLQ replay names its original coordinates."""
        return self.header(K.H_REPLAY_OF) or f"{self.topic}/{self.partition}/{self.offset}"

    @property
    def now(self) -> float:
        """The message time (seconds): the original one for a replay."""
        original = self.header(K.H_ORIGINAL_TIMESTAMP)
        return (int(original) if original and original.isdigit() else self.timestamp_ms) / 1000.0


@dataclass
class Result:
    record: InputRecord
    outcome: dict[str, Any]
    to_dlq: bool = False
    replayed: bool = False  # the stored first outcome was sent again
    ledger: Any = None  # the ledger entry (ObjectId) to store the outcome under

    @property
    def ok(self) -> bool:
        return not self.outcome.get("errors")

    @property
    def code(self) -> int:
        errors = self.outcome.get("errors") or []
        return int(errors[0]["code"]) if errors else 200
