"""Outcomes out, in the API-response envelope of CONTRACT.md section 3.

Whatever a message carried, its outcome stays small and printable: a string echoed from the
input (requestId, type) is cut to MAX_ECHO characters with a marker, so that an outcome
always fits in a Kafka record (kafka_io.encode also replaces what UTF-8 cannot hold).
"""

from __future__ import annotations

from typing import Any

from badge_worker.domain.errors import Rejection

MAX_ECHO = 1024  # characters of an input string repeated in an outcome


def clip(text: str, limit: int = MAX_ECHO) -> str:
    """`text` if it has at most `limit` characters, else its beginning and a marker naming its
    full length, `limit` characters in all (so clipping twice changes nothing)."""
    if len(text) <= limit:
        return text
    marker = f"…[truncated, {len(text)} characters]"
    return text[: max(0, limit - len(marker))] + marker


def envelope(kind: str | None, org_id: int | None, request_id: str | None,
             data: dict[str, Any] | None, rejection: Rejection | None = None) -> dict[str, Any]:
    return {
        "type": None if kind is None else clip(kind),
        "orgId": org_id,
        "requestId": None if request_id is None else clip(request_id),
        "data": data,
        "errors": [] if rejection is None else [rejection.as_error()],
        "warnings": [],
    }
