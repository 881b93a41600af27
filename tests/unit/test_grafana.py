"""The Grafana dashboard asks only for metrics (and labels) the worker and the read API export."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from badge_worker.api.app import Metrics as ApiMetrics
from badge_worker.metrics import REGISTRY

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "badge-worker.json"
FUNCTIONS = {"sum", "max", "min", "avg", "rate", "irate", "increase", "histogram_quantile", "by", "without",
             "le", "count", "abs", "clamp_min"}
SUFFIXES = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"]}


def exported(registries: list[CollectorRegistry]) -> dict[str, set[str]]:
    """Every series name a scrape can show, with the labels it carries."""
    names: dict[str, set[str]] = {}
    for registry in registries:
        for family in registry.collect():
            labels = set(getattr(registry._names_to_collectors.get(family.name + "_total")  # counters
                                 or registry._names_to_collectors.get(family.name), "_labelnames", ()))
            for suffix in SUFFIXES[family.type]:
                names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def problems(expr: str, names: dict[str, set[str]]) -> tuple[list[str], set[str]]:
    """What is wrong with one PromQL expression, and the metrics it reads."""
    no_ranges = re.sub(r"\[[^\]]*\]", "", expr)
    grouped = {label.strip() for group in re.findall(r"by \(([^)]*)\)", no_ranges) for label in group.split(",")}
    metrics = {word for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", re.sub(r"by \([^)]*\)", "", no_ranges))
               if word not in FUNCTIONS}
    found = [] if metrics else [f"{expr!r} reads no metric"]
    for metric in sorted(metrics):
        if metric not in names:
            found.append(f"{metric} (in {expr!r}) is not exported")
        elif not grouped <= names[metric]:
            found.append(f"{expr!r} groups by {sorted(grouped - names[metric])}, which {metric} lacks")
    return found, metrics


def test_every_metric_and_label_in_the_dashboard_is_exported() -> None:
    names = exported([REGISTRY, ApiMetrics().registry])
    used: set[str] = set()
    for expr in expressions(json.loads(DASHBOARD.read_text())):
        found, metrics = problems(expr, names)
        assert not found
        used |= metrics
    # the panels the operators need: throughput by code, lag, batch latency, retries, DLQ
    for needed in ("badge_worker_outcomes_total", "badge_worker_consumer_lag", "badge_worker_batch_seconds_bucket",
                   "badge_worker_infra_retries_total", "badge_worker_dlq_total"):
        assert needed in used


def test_the_check_catches_unknown_metrics_and_labels() -> None:
    names = exported([REGISTRY])
    assert names["badge_worker_outcomes_total"] == {"topic", "code"}
    assert problems("sum(rate(badge_worker_outcome_total[1m]))", names)[0]  # a misspelt name
    assert problems("sum by (status) (rate(badge_worker_outcomes_total[1m]))", names)[0]  # a label it lacks
    assert problems("badge_worker_batch_seconds", names)[0]  # a histogram is read through its series
    assert not problems("sum by (le) (rate(badge_worker_batch_seconds_bucket[5m]))", names)[0]


def test_panels_have_unique_ids_and_a_prometheus_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])
