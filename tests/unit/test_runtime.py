"""runtime.tune_gc, in a fresh interpreter each time: it changes process-wide state that this
test process must keep at Python's defaults."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from badge_worker.settings import Settings

PROBE = """
import gc, json, sys
from badge_worker.runtime import tune_gc
before = gc.get_threshold()
tune_gc(int(sys.argv[1]))
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def probe(threshold: int) -> dict[str, list[int] | int]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(threshold)], capture_output=True, text=True,
                         check=True, timeout=60)
    return json.loads(out.stdout)


def test_the_young_threshold_is_raised_and_the_start_up_objects_frozen() -> None:
    seen = probe(20_000)
    assert seen["after"] == [20_000, 20, 10]
    assert seen["frozen"] > 1_000  # the imported modules' objects: out of every collection's reach


def test_zero_keeps_python_s_defaults() -> None:
    seen = probe(0)
    assert seen["after"] == seen["before"]
    assert seen["frozen"] == 0


def test_the_setting_reads_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GC_YOUNG_THRESHOLD", raising=False)
    assert Settings().gc_young_threshold == 20_000
    monkeypatch.setenv("GC_YOUNG_THRESHOLD", "0")
    assert Settings().gc_young_threshold == 0
    monkeypatch.setenv("GC_YOUNG_THRESHOLD", "-1")
    with pytest.raises(ValidationError):
        Settings()
