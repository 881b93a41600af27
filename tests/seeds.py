"""The vendor's JSON examples, as committed under tests/fixtures/vendor_examples (see its README)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vendor_examples"


def vendor_examples() -> dict[str, list[Any]]:
    """Page stem (e.g. "issue-badge-earn") -> the complete JSON objects of that page, in page order."""
    pages = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(FIXTURES.glob("*.json"))}
    if not pages:
        raise FileNotFoundError(f"no vendor examples in {FIXTURES}")
    return pages


def all_examples() -> list[Any]:
    """Every example of every page, page after page."""
    return [obj for objects in vendor_examples().values() for obj in objects]
