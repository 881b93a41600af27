"""Tracing end to end: a worker with the `otel` extra exports its spans over OTLP/HTTP to a
real receiver (an HTTP server in this test decoding the protobuf requests), and the
outcome and event records carry the trace on."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from badge_worker.adapters.mongo import Repositories
from badge_worker.client import Collector, Publisher
from badge_worker.settings import Settings
from tests.integration.helpers import ORG, live_badge, load, running_worker
from tests.integration.test_events import EventReader

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


class Receiver:
    """An OTLP/HTTP trace receiver: every span it was sent, with its resource attributes."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = ExportTraceServiceRequest.FromString(body)
                with receiver.lock:
                    for resource_spans in request.resource_spans:
                        resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                        for scope in resource_spans.scope_spans:
                            for span in scope.spans:
                                receiver.spans.append(receiver.as_dict(span, resource))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @staticmethod
    def as_dict(span: Any, resource: dict[str, str]) -> dict[str, Any]:
        def value(v: Any) -> Any:
            return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None

        return {"name": span.name, "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                "parent": span.parent_span_id.hex(), "start": span.start_time_unix_nano,
                "end": span.end_time_unix_nano, "links": [link.span_id.hex() for link in span.links],
                "attributes": {a.key: value(a.value) for a in span.attributes}, "resource": resource,
                "error": span.status.code == 2}


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    r = Receiver()
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", r.url)  # the exporter adds /v1/traces
    monkeypatch.setenv("OTEL_SERVICE_NAME", "badge-worker-under-test")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


async def test_spans_per_batch_and_command_and_the_trace_rides_on_outcomes_and_events(
        topics: Settings, mongo: Repositories, receiver: Receiver) -> None:
    s = topics
    await load(mongo, live_badge("tr-b"))

    def earn(rid: str, customer: int) -> dict[str, object]:
        return {"orgId": ORG, "type": "earn", "requestId": rid, "badgeMetaId": "tr-b", "customerId": customer}

    async with Collector(s) as collector, Publisher(s) as pub, EventReader(s) as reader:
        async with running_worker(s):
            traced = await pub.send(s.topic_earns, earn("t1", 1),
                                    headers=[("traceparent", f"00-{TRACE}-{PARENT}-01".encode()),
                                             ("tracestate", b"vendor=abc")])
            plain = await pub.send(s.topic_earns, earn("t2", 2))
            junk = await pub.send(s.topic_earns, earn("t3", 3), headers=[("traceparent", b"00-zz-not-valid-01")])
            outcomes = await collector.wait_for([traced, plain, junk], 60)
            await reader.wait_count(3)
        # the worker has stopped: its span processor was flushed on the way out
        deadline = time.monotonic() + 10
        while len([x for x in receiver.spans if x["name"].startswith("process ")]) < 3:
            assert time.monotonic() < deadline, receiver.spans
            await asyncio.sleep(0.1)

    assert {o.code for o in outcomes.values()} == {200}
    commands = {x["attributes"]["badge.request_id"]: x for x in receiver.spans
                if x["name"] == f"process {s.topic_earns}"}
    batches = {x["span_id"]: x for x in receiver.spans if x["name"] == f"batch {s.topic_earns}"}
    assert set(commands) == {"t1", "t2", "t3"}
    for x in receiver.spans:
        assert x["resource"]["service.name"] == "badge-worker-under-test"

    # the traced command continues the producer's trace; its outcome and event name the command span
    t1 = commands["t1"]
    assert (t1["trace_id"], t1["parent"]) == (TRACE, PARENT)
    assert t1["links"] and t1["links"][0] in batches  # and it links to its batch
    assert t1["attributes"]["badge.code"] == 200 and t1["attributes"]["badge.org_id"] == str(ORG)
    assert t1["attributes"]["messaging.kafka.offset"] == traced[2]
    assert t1["start"] <= t1["end"] and not t1["error"]
    expected = f"00-{TRACE}-{t1['span_id']}-01"
    assert outcomes[traced].headers["traceparent"] == expected
    assert outcomes[traced].headers["tracestate"] == "vendor=abc"
    event_headers = {json.loads(r.value or b"{}")["requestId"]: dict(r.headers or ()) for r in reader.records}
    assert event_headers["t1"]["traceparent"] == expected.encode()

    # without a (valid) traceparent: the command span is a child of its batch, and no trace goes out
    for rid, coord in (("t2", plain), ("t3", junk)):
        span = commands[rid]
        assert span["parent"] in batches and span["trace_id"] == batches[span["parent"]]["trace_id"]
        assert "traceparent" not in outcomes[coord].headers
        assert "traceparent" not in event_headers[rid]
    for batch in batches.values():
        assert batch["attributes"]["messaging.batch.message_count"] >= 1
        assert batch["attributes"]["messaging.destination.name"] == s.topic_earns
