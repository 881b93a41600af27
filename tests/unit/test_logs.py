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


def test_repeated_library_lines_are_rate_limited_and_say_how_many_were_dropped(
        capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO")
    clock = [0.0]
    noise = next(f for f in logging.getLogger().handlers[0].filters if isinstance(f, logs.LibraryNoise))
    noise.clock = lambda: clock[0]
    try:
        lib = logging.getLogger("aiokafka.client")
        for node in range(5):  # a burst of the same template within one window: one line
            lib.warning("Unable to request metadata from node with id %s: %r", node, "timeout")
        lib.warning("another message")  # another template is not held back by the first
        clock[0] = logs.REPEAT_WINDOW_S + 1
        lib.warning("Unable to request metadata from node with id %s: %r", 9, "timeout")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        structlog.reset_defaults()
    assert [line["event"] for line in lines] == [
        "Unable to request metadata from node with id 0: 'timeout'", "another message",
        "Unable to request metadata from node with id 9: 'timeout'"]
    assert "suppressed" not in lines[0] and lines[2]["suppressed"] == 4


def test_errors_aiokafka_retries_itself_become_warnings_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    from aiokafka.errors import CoordinatorNotAvailableError, GroupAuthorizationFailedError

    logs.configure("INFO")
    try:
        group = logging.getLogger("aiokafka.consumer.group_coordinator")
        group.error("Group Coordinator Request failed: %s", CoordinatorNotAvailableError())
        logs.configure("INFO")  # a fresh filter: the second line is not a repeat
        group.error("Group Coordinator Request failed: %s", GroupAuthorizationFailedError())  # not retriable
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        structlog.reset_defaults()
    assert lines[0]["level"] == "warning" and lines[0]["downgraded_from"] == "error"
    assert "coordinator" in lines[0]["reason"]
    assert lines[1]["level"] == "error" and "downgraded_from" not in lines[1]
