"""JSON text for the fields MongoDB only keeps and hands back, never queries inside.

On FerretDB (the local store) a nested document or array is what a write and a read cost:
every find decodes each stored document whole. The same data as one string costs a fraction
(measured: docs/ and README, "Benchmark"); on MongoDB either shape is one index lookup.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except (TypeError, ValueError):  # lone surrogates, integers beyond 64 bits: the stdlib escapes them
        return json.dumps(value, separators=(",", ":"))


def loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except ValueError:  # the stdlib's escapes of what orjson refuses
        return json.loads(text)
