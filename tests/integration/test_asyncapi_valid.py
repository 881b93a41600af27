"""docs/asyncapi.yaml passes the real AsyncAPI parser (npm @asyncapi/parser, installed by
deploy/local/tools/asyncapi-validate), and a document broken on purpose does not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from badge_worker import asyncapi

VALIDATE = Path(__file__).resolve().parents[2] / "deploy" / "local" / "tools" / "asyncapi-validate"


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VALIDATE), str(path)], capture_output=True, text=True, timeout=600)


def test_the_committed_document_is_valid_asyncapi_3() -> None:
    done = validate(asyncapi.DOCS / "asyncapi.yaml")
    assert done.returncode == 0, done.stderr
    assert "valid AsyncAPI 3.0.0, 6 channels, 6 operations, 5 messages" in done.stdout


def test_a_broken_document_is_refused_with_the_reason(tmp_path: Path) -> None:
    doc = yaml.safe_load((asyncapi.DOCS / "asyncapi.yaml").read_text())
    doc["operations"]["receiveEarns"]["action"] = "consume"  # AsyncAPI 3 knows only send/receive
    doc["channels"]["results"]["messages"]["Outcome"] = {"$ref": "#/components/messages/Nowhere"}
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(doc))
    done = validate(broken)
    assert done.returncode == 1
    assert "error" in done.stderr and "action" in done.stderr
