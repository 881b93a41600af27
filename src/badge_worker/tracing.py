"""W3C trace context on the records, and OpenTelemetry spans when the `otel` extra is there.

Propagation always works, with or without OpenTelemetry: an input's valid `traceparent`
(and its `tracestate`) goes out on its outcome and event records, so a consumer of results
continues the producer's trace. The DLQ copy keeps the input's headers as they were (a
replay continues the original trace). An invalid or repeated traceparent is not propagated
(the W3C rule: start afresh rather than join a trace by mistake).

With `pip install badge-worker[otel]` the worker also emits spans, configured only by the
standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*; OTEL_TRACES_EXPORTER=otlp|console|none;
OTEL_SDK_DISABLED=true turns it off): one span per partition batch and one per command,
the command span a child of the input's traceparent, and the outcome's traceparent then
names the command span as its parent."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

# version-traceid-parentid-flags; lower-case hex only. A future version may append fields.
_HEADER = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[^\s]*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
MAX_TRACESTATE = 512  # bytes: the W3C limit a vendor may cut to; longer is dropped, not cut


@dataclass(frozen=True)
class TraceContext:
    trace_id: str  # 32 hex
    parent_id: str  # 16 hex: the producer's span
    flags: str  # 2 hex; 01 = sampled
    state: bytes | None = None  # tracestate, as received

    @property
    def sampled(self) -> bool:
        return bool(int(self.flags, 16) & 1)

    def headers(self, span_id: str | None = None) -> list[tuple[str, bytes]]:
        """The headers to write on an output: this trace, with `span_id` (the worker's span
        for the command) as parent when there is one, else the input's parent unchanged."""
        value = f"00-{self.trace_id}-{span_id or self.parent_id}-{self.flags}".encode()
        out = [(TRACEPARENT, value)]
        if self.state:
            out.append((TRACESTATE, self.state))
        return out


def parse(headers: Iterable[tuple[str, bytes]]) -> TraceContext | None:
    """The trace context of a record's headers, or None when absent or invalid."""
    parents = []
    states = []
    for name, value in headers:
        if name == TRACEPARENT:
            parents.append(value)
        elif name == TRACESTATE:
            states.append(value)
    if len(parents) != 1:
        return None
    try:
        text = bytes(parents[0] or b"").decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    match = _HEADER.fullmatch(text)
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    state = states[0] if len(states) == 1 and 0 < len(states[0]) <= MAX_TRACESTATE else None
    return TraceContext(trace_id, parent_id, flags, bytes(state) if state else None)


# --- OpenTelemetry (optional) -------------------------------------------------------------

class Tracing:
    """Spans for batches and commands. Built by `from_env()`; None when OTel is off."""

    def __init__(self, tracer: Any, provider: Any) -> None:
        self._tracer = tracer
        self._provider = provider
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

        self._trace = trace
        self._span_context = SpanContext
        self._non_recording = NonRecordingSpan
        self._flags = TraceFlags
        self._status = Status
        self._code = StatusCode

    def _remote(self, context: TraceContext) -> Any:
        from opentelemetry.trace.span import TraceState

        state = TraceState.from_header([context.state.decode("ascii", "replace")]) if context.state else None
        parent = self._span_context(int(context.trace_id, 16), int(context.parent_id, 16), is_remote=True,
                                    trace_flags=self._flags(int(context.flags, 16)), trace_state=state)
        return self._trace.set_span_in_context(self._non_recording(parent))

    @staticmethod
    def _where(topic: str, partition: int) -> dict[str, Any]:
        """The messaging attributes a batch span and a command span share."""
        return {"messaging.system": "kafka", "messaging.operation.type": "process",
                "messaging.destination.name": topic, "messaging.destination.partition.id": str(partition)}

    def batch(self, topic: str, partition: int, size: int, group: str) -> Any:
        return self._tracer.start_span(f"batch {topic}", kind=self._trace.SpanKind.CONSUMER, attributes={
            **self._where(topic, partition), "messaging.consumer.group.name": group,
            "messaging.batch.message_count": size})

    def command(self, batch: Any, topic: str, partition: int, offset: int,
                context: TraceContext | None, start_ns: int) -> Any:
        """A command's span, from when its batch started; a child of the producer's span when
        the input carried a traceparent, else of the batch span (which it then links to)."""
        parent = self._remote(context) if context else self._trace.set_span_in_context(batch)
        links = [self._trace.Link(batch.get_span_context())] if context else None
        return self._tracer.start_span(f"process {topic}", context=parent, kind=self._trace.SpanKind.CONSUMER,
                                       start_time=start_ns, links=links,
                                       attributes={**self._where(topic, partition), "messaging.kafka.offset": offset})

    @staticmethod
    def span_id(span: Any) -> str | None:
        ctx = span.get_span_context()
        return f"{ctx.span_id:016x}" if ctx.is_valid and ctx.trace_flags.sampled else None

    def finish(self, span: Any, *, error: BaseException | None = None, **attributes: Any) -> None:
        for key, value in attributes.items():
            if value is not None:
                span.set_attribute(key, value)
        if error is not None:
            span.set_status(self._status(self._code.ERROR, type(error).__name__))
        span.end()

    def shutdown(self) -> None:
        self._provider.shutdown()  # flushes what the batch processor still holds


class BatchSpans:
    """The spans of one partition batch: the batch's and one per command, all started when
    the batch is, ended together when it commits or fails (a retried batch gets new ones)."""

    def __init__(self, tracing: Tracing, tp: Any, records: Sequence[Any], group: str) -> None:
        self._tracing = tracing
        start = time.time_ns()
        self._batch = tracing.batch(tp.topic, tp.partition, len(records), group)
        self._commands = {r.offset: tracing.command(self._batch, r.topic, r.partition, r.offset, r.trace, start)
                          for r in records}

    def span_id(self, offset: int) -> str | None:
        span = self._commands.get(offset)
        return None if span is None else self._tracing.span_id(span)

    def finish(self, *, results: Sequence[Any] = (), error: BaseException | None = None) -> None:
        with contextlib.suppress(Exception):  # a span that cannot end is lost; the batch is not
            self._finish(results, error)

    def _finish(self, results: Sequence[Any], error: BaseException | None) -> None:
        by_offset = {r.record.offset: r for r in results}
        for offset, span in self._commands.items():
            r = by_offset.get(offset)
            outcome = r.outcome if r is not None else {}
            self._tracing.finish(span, error=error, **{
                "badge.request_id": _text(outcome.get("requestId")), "badge.org_id": _text(outcome.get("orgId")),
                "badge.code": r.code if r is not None else None,
                "badge.to_dlq": r.to_dlq if r is not None else None})
        self._tracing.finish(self._batch, error=error)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:256]


def from_env() -> Tracing | None:
    """Spans on when the OpenTelemetry SDK is installed and the OTEL_* variables do not turn it off."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter_name == "none":
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        return None
    exporter: Any
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            return None
        exporter = OTLPSpanExporter()  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_* variables
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; ours is the default name
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "badge-worker"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    from badge_worker import __version__

    return Tracing(provider.get_tracer("badge_worker", __version__), provider)
