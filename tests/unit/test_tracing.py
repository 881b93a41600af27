"""W3C trace context: what is accepted, what is refused, and what goes out on outputs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from badge_worker import tracing
from badge_worker.adapters.kafka_io import dlq_headers, outcome_headers
from badge_worker.domain.commands import Stream
from badge_worker.service.messages import InputRecord, Result

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01".encode()


def rec(headers: list[tuple[str, bytes]]) -> InputRecord:
    return InputRecord("badges.earns", 0, 7, b"k", b"{}", tuple(headers), 1, Stream.EARNS)


def named(headers: list[tuple[str, bytes]], name: str) -> list[bytes]:
    return [v for k, v in headers if k == name]


def test_a_valid_traceparent_and_its_tracestate_are_read() -> None:
    ctx = tracing.parse([("traceparent", VALID), ("tracestate", b"congo=t61rcWkgMzE")])
    assert ctx == tracing.TraceContext(TRACE, PARENT, "01", b"congo=t61rcWkgMzE")
    assert ctx.sampled


def test_future_versions_may_append_fields_but_version_00_may_not() -> None:
    assert tracing.parse([("traceparent", f"01-{TRACE}-{PARENT}-00-extra".encode())]) is not None
    assert tracing.parse([("traceparent", f"00-{TRACE}-{PARENT}-01-extra".encode())]) is None


def test_invalid_trace_contexts_are_not_propagated() -> None:
    bad = [
        f"ff-{TRACE}-{PARENT}-01",  # version ff is forbidden
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE.upper()}-{PARENT}-01",  # upper-case hex
        f"00-{TRACE[:-1]}-{PARENT}-01",  # too short
        "not a trace", "",
    ]
    for value in bad:
        assert tracing.parse([("traceparent", value.encode())]) is None, value
    assert tracing.parse([("traceparent", b"\xff\xfe")]) is None
    assert tracing.parse([("traceparent", VALID), ("traceparent", VALID)]) is None  # repeated: ambiguous
    assert tracing.parse([]) is None


def test_a_repeated_or_oversized_tracestate_is_dropped_not_the_trace() -> None:
    ctx = tracing.parse([("traceparent", VALID), ("tracestate", b"a=1"), ("tracestate", b"b=2")])
    assert ctx is not None and ctx.state is None
    ctx = tracing.parse([("traceparent", VALID), ("tracestate", b"a=" + b"x" * 600)])
    assert ctx is not None and ctx.state is None


@given(st.binary(max_size=80))
def test_any_header_bytes_parse_or_are_refused_without_raising(value: bytes) -> None:
    ctx = tracing.parse([("traceparent", value)])
    if ctx is not None:  # what is accepted writes back a valid header
        assert tracing.parse(ctx.headers()) == tracing.TraceContext(ctx.trace_id, ctx.parent_id, ctx.flags)


def test_outcomes_carry_the_input_trace_and_name_the_worker_span_when_there_is_one() -> None:
    record = rec([("traceparent", VALID), ("tracestate", b"k=v")])
    assert named(outcome_headers(record), "traceparent") == [VALID]
    assert named(outcome_headers(record), "tracestate") == [b"k=v"]
    assert named(outcome_headers(record, "b7ad6b7169203331"), "traceparent") == [
        f"00-{TRACE}-b7ad6b7169203331-01".encode()]


def test_no_or_invalid_trace_context_adds_no_trace_header() -> None:
    for headers in ([], [("traceparent", b"junk")]):
        assert named(outcome_headers(rec(headers)), "traceparent") == []


def test_the_dlq_copy_keeps_the_input_trace_headers_as_they_were() -> None:
    record = rec([("traceparent", VALID), ("tracestate", b"k=v")])
    outcome = {"orgId": 1, "requestId": "r", "errors": [{"code": 500, "message": "x"}]}
    headers = dlq_headers(Result(record, outcome, to_dlq=True, span_id="b7ad6b7169203331"))
    assert named(headers, "traceparent") == [VALID]  # a replay continues the producer's trace
    assert named(headers, "tracestate") == [b"k=v"]


def test_spans_are_off_when_the_environment_says_so(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.from_env() is None
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert tracing.from_env() is None
