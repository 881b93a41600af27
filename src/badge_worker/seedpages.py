"""The vendor's badge examples: read out of its API pages (markdown or plain text), or shipped.

The package carries the badge definitions the demo loads (`data/vendor_badges.json`); the tests
carry every example of every page (`tests/fixtures/vendor_examples`). Both were extracted from
the pages with this module, which stays the tool to regenerate them:

    python -m badge_worker.seedpages extract PAGES_DIR tests/fixtures/vendor_examples
    python -m badge_worker.seedpages badges PAGES_DIR src/badge_worker/data/vendor_badges.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from badge_worker.domain.models import BadgeDefinition

PACKAGED_BADGES = ("data", "vendor_badges.json")


def default_seeds_dir() -> Path | None:
    """$BADGE_SEEDS_DIR when it names a folder of pages; otherwise None (use the packaged badges)."""
    env = os.environ.get("BADGE_SEEDS_DIR")
    folder = Path(env) if env else None
    return folder if folder is not None and folder.is_dir() else None


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
    """File name -> the complete JSON objects of that page, in page order."""
    return {p.name: json_objects(p.read_text(encoding="utf-8", errors="replace"))
            for p in sorted(folder.iterdir()) if p.is_file()}


def is_badge_payload(obj: Any) -> bool:
    body = obj.get("data", obj) if isinstance(obj, dict) else None
    if isinstance(body, dict) and isinstance(body.get("badges"), list):
        return True
    return isinstance(body, dict) and ("customerConstraints" in body or "earnType" in body)


def bare_definitions(payload: Any) -> list[dict[str, Any]]:
    """The definitions inside one payload, unwrapped the way `BadgeDefinition.from_payload` does."""
    if isinstance(payload, list):
        return [item for entry in payload for item in bare_definitions(entry)]
    if not isinstance(payload, dict):
        return []
    inner = payload.get("data")
    if isinstance(inner, dict) and isinstance(inner.get("badges"), list):
        return bare_definitions(inner["badges"])
    if isinstance(inner, dict | list):
        return bare_definitions(inner)
    return [payload]


def badge_documents(objects: Iterable[Any]) -> list[dict[str, Any]]:
    """The bare badge definitions among `objects`, one per id: the last one wins, first place kept."""
    by_id: dict[str, dict[str, Any]] = {}
    for obj in objects:
        if is_badge_payload(obj):
            for definition in bare_definitions(obj):
                by_id[str(BadgeDefinition.model_validate(definition).id)] = definition
    return list(by_id.values())


def badges_of(objects: Iterable[Any]) -> list[BadgeDefinition]:
    """Every badge definition among `objects` (examples of one or more pages); last of each id wins."""
    return [BadgeDefinition.model_validate(d) for d in badge_documents(objects)]


def badge_examples(folder: Path) -> list[BadgeDefinition]:
    """Every badge definition in a folder of pages; the last one of each id wins."""
    return badges_of(obj for objects in page_examples(folder).values() for obj in objects)


def packaged_badges() -> list[BadgeDefinition]:
    """The vendor's example badge definitions shipped with the package (what the demo loads)."""
    data = resources.files("badge_worker").joinpath(*PACKAGED_BADGES).read_text(encoding="utf-8")
    return BadgeDefinition.from_payload(json.loads(data))


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def extract(pages: Path, dest: Path) -> list[Path]:
    """Write `<page stem>.json` into `dest` for every page: the list of its complete JSON objects."""
    written = []
    for name, objects in page_examples(pages).items():
        target = dest / f"{Path(name).stem}.json"
        _write_json(target, objects)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m badge_worker.seedpages",
                                     description="extract the JSON examples of the vendor's API pages")
    sub = parser.add_subparsers(dest="action", required=True)
    ex = sub.add_parser("extract", help="one <page stem>.json per page: its complete JSON objects, in order")
    ex.add_argument("src", type=Path, help="folder of API pages (.md / .txt)")
    ex.add_argument("dest", type=Path, help="folder to write the .json files into")
    bd = sub.add_parser("badges", help="the pages' badge definitions (last of each id wins) as one JSON list")
    bd.add_argument("src", type=Path, help="folder of API pages (.md / .txt)")
    bd.add_argument("out", type=Path, help="file to write, e.g. src/badge_worker/data/vendor_badges.json")
    args = parser.parse_args(argv)
    if not args.src.is_dir():
        parser.error(f"{args.src}: not a folder")
    if args.action == "extract":
        for path in extract(args.src, args.dest):
            print(path)
        return 0
    documents = badge_documents(obj for objects in page_examples(args.src).values() for obj in objects)
    _write_json(args.out, documents)
    print(f"{args.out}: {len(documents)} badge definition(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
