"""Outcomes out, in the API-response envelope of CONTRACT.md section 3."""

from __future__ import annotations

from typing import Any

from badge_worker.domain.errors import Rejection


def envelope(kind: str | None, org_id: int | None, request_id: str | None,
             data: dict[str, Any] | None, rejection: Rejection | None = None) -> dict[str, Any]:
    return {
        "type": kind,
        "orgId": org_id,
        "requestId": request_id,
        "data": data,
        "errors": [] if rejection is None else [rejection.as_error()],
        "warnings": [],
    }

