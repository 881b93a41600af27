"""Prometheus metrics of the worker."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

OUTCOMES = Counter("badge_worker_outcomes_total", "Outcomes published, by input topic and code",
                   ["topic", "code"], registry=REGISTRY)
DLQ = Counter("badge_worker_dlq_total", "Records copied to the DLQ", ["topic"], registry=REGISTRY)
BATCH_SECONDS = Histogram("badge_worker_batch_seconds", "Partition batch processing time, commit included",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=REGISTRY)
BATCH_RECORDS = Histogram("badge_worker_batch_records", "Records per partition batch",
                          buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000), registry=REGISTRY)
LAG = Gauge("badge_worker_consumer_lag", "High watermark minus position, per partition",
            ["topic", "partition"], registry=REGISTRY)
INFRA_RETRIES = Counter("badge_worker_infra_retries_total", "Partition batches retried after an outage",
                        registry=REGISTRY)
READY = Gauge("badge_worker_ready", "1 when the worker is processing normally", registry=REGISTRY)
