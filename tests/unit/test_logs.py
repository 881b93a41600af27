"""Every line on stderr is one JSON object, including what libraries log through `logging`."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from badge_worker import logs


def test_library_and_worker_lines_are_json_with_their_context(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO")
    try:
        logging.getLogger("aiokafka.consumer").warning("Heartbeat failed for group %s", "g")
        try:
            raise ValueError("bad")
        except ValueError:
            logging.getLogger("asyncio").exception("Task exception was never retrieved")
        logging.getLogger("aiokafka").info("too chatty to keep")
        with structlog.contextvars.bound_contextvars(requestId="r-1", orgId=7, topic="t", partition=1, offset=9):
            structlog.get_logger("badge_worker.test").warning("message_failed")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        structlog.reset_defaults()
    assert [line["event"] for line in lines] == ["Heartbeat failed for group g", "Task exception was never retrieved",
                                                 "message_failed"]
    assert lines[0]["logger"] == "aiokafka.consumer" and lines[0]["level"] == "warning"
    assert "ValueError: bad" in lines[1]["exception"]
    assert {k: lines[2][k] for k in ("requestId", "orgId", "topic", "partition", "offset")} == \
        {"requestId": "r-1", "orgId": 7, "topic": "t", "partition": 1, "offset": 9}
