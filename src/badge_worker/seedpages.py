"""Read the complete JSON examples out of the vendor's API pages (markdown or plain text)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from badge_worker.domain.models import BadgeDefinition


def default_seeds_dir() -> Path | None:
    """$BADGE_SEEDS_DIR, else ../shared/seeds from the working directory or from the repo."""
    env = os.environ.get("BADGE_SEEDS_DIR")
    candidates = [Path(env)] if env else []
    candidates += [Path.cwd().parent / "shared" / "seeds", Path(__file__).resolve().parents[3] / "shared" / "seeds"]
    return next((p for p in candidates if p.is_dir()), None)


def json_objects(text: str) -> list[Any]:
    """Every balanced top-level {...} in `text` that is valid JSON, in order.

    The pages mix prose, tables and truncated snippets; a scanner that respects JSON
    strings finds the complete objects, and a stray '}' of a truncated one is skipped.
    """
    found: list[Any] = []
    depth, start, in_string, escaped = 0, -1, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"' and depth > 0:
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                with contextlib.suppress(ValueError):
                    found.append(json.loads(text[start : i + 1]))
    return found


def page_examples(folder: Path) -> dict[str, list[Any]]:
    return {p.name: json_objects(p.read_text(encoding="utf-8", errors="replace"))
            for p in sorted(folder.iterdir()) if p.is_file()}


def is_badge_payload(obj: Any) -> bool:
    body = obj.get("data", obj) if isinstance(obj, dict) else None
    if isinstance(body, dict) and isinstance(body.get("badges"), list):
        return True
    return isinstance(body, dict) and ("customerConstraints" in body or "earnType" in body)


def badge_examples(folder: Path) -> list[BadgeDefinition]:
    """Every badge definition in the pages; the last one of each id wins."""
    by_id: dict[str, BadgeDefinition] = {}
    for objects in page_examples(folder).values():
        for obj in objects:
            if is_badge_payload(obj):
                for badge in BadgeDefinition.from_payload(obj):
                    by_id[badge.id] = badge
    return list(by_id.values())
