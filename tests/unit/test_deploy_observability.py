"""deploy/grafana dashboard and deploy/prometheus alert rules, checked statically.

Every PromQL expression is parsed with ``promql-parser`` (PyPI, pinned; Rust bindings of a PromQL parser)
and every metric it selects must exist: the names come from ``service/prometheus.py`` itself (each metrics
dataclass's ``create()`` on a fresh registry), plus ``PENDING`` (metrics the deploy files use that are not
registered there yet). ``promtool check rules`` also runs when a ``promtool`` binary is on PATH; it is not
installed by the project (no PyPI package ships it; it builds from the Go module proxy with
``go install github.com/prometheus/prometheus/cmd/promtool@v0.316.0``, ~40 min on 2 cores), so it is optional.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "runstream-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
# Metrics the deploy files may name before service/prometheus.py registers them; empty while every one is registered.
PENDING: set[str] = set()
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "summary": ("_sum", "_count"),
}
_GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


@cache
def known_metrics() -> frozenset[str]:
    import service.prometheus as metrics_module

    names: set[str] = set()
    for _, cls in inspect.getmembers(metrics_module, inspect.isclass):
        if cls.__module__ != metrics_module.__name__ or not hasattr(cls, "create"):
            continue
        registry = CollectorRegistry()
        cls.create(registry)
        for family in registry.collect():
            names |= {family.name + s for s in _SUFFIXES[family.type]}
    assert names, "service/prometheus.py registers no metric"
    return frozenset(names | PENDING)


def selected_metrics(expr: str) -> set[str]:
    for var, value in _GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    out: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"selector without a metric name in {expr!r}"
            out.add(node.name)
        for attr in ("expr", "lhs", "rhs", "vector_selector", "param"):
            child = getattr(node, attr, None)
            if child is not None and not isinstance(child, str | int | float):
                walk(child)
        for arg in getattr(node, "args", None) or []:
            walk(arg)

    walk(promql_parser.parse(expr))
    return out


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]


def _alert_rules(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in doc["groups"] for r in g["rules"]]


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _alerts() -> dict[str, Any]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


# --- the checker itself --------------------------------------------------------------------------------


def test_known_metrics_come_from_service_prometheus() -> None:
    known = known_metrics()
    for name in ("runstream_consumer_lag", "runstream_events_total", "runstream_ready", "runstream_rebalances_total"):
        assert name in known


def test_selected_metrics_walks_nested_expressions() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="1"}[$__rate_interval]))) > 1'
        " and on () (b == 0) unless max_over_time(c[5m:1m]) and -d"
    )
    assert selected_metrics(expr) == {"a_bucket", "b", "c", "d"}
    with pytest.raises(ValueError):
        selected_metrics("sum(rate(x[5m])")


# --- Grafana -------------------------------------------------------------------------------------------


def test_dashboard_is_a_grafana_dashboard_with_unique_panels() -> None:
    d = _dashboard()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in _panels(d)]
    assert len(ids) == len(set(ids))
    for p in _panels(d):
        assert {"h", "w", "x", "y"} <= p["gridPos"].keys()
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["targets"], p["title"]
            assert [t["refId"] for t in p["targets"]] == sorted({t["refId"] for t in p["targets"]})
    variables = {v["name"] for v in d["templating"]["list"]}
    for expr in _dashboard_exprs(d):
        for var in re.findall(r"\$(\w+)", expr):
            assert var.startswith("__") or var in variables, f"${var} is not a dashboard variable"


def test_every_dashboard_expression_parses_and_selects_known_metrics() -> None:
    known = known_metrics()
    for expr in _dashboard_exprs(_dashboard()):
        unknown = selected_metrics(expr) - known
        assert not unknown, f"{expr}: unknown metrics {unknown}"


def test_dashboard_covers_what_operators_need() -> None:
    used = set().union(*map(selected_metrics, _dashboard_exprs(_dashboard())))
    needed = {
        "runstream_consumer_lag",  # lag per partition, committed
        "runstream_consumer_lag_stored",  # ... and processed
        "runstream_events_total",  # in/out by outcome
        "runstream_dlq_messages_total",  # DLQ by class
        "runstream_labelbox_requests_total",  # Labelbox calls by status class
        "runstream_labelbox_retries_total",  # retries
        "runstream_batch_duration_seconds_bucket",  # flush latency p99
        "runstream_in_flight_batches",
        "runstream_aggregator_commit_seconds_bucket",
    }
    assert needed <= used, needed - used


def test_a_dashboard_with_an_unknown_metric_is_rejected() -> None:
    d = _dashboard()
    d["panels"][1]["targets"][0]["expr"] = "sum(rate(runstream_dlq_total[5m]))"
    with pytest.raises(AssertionError):
        for expr in _dashboard_exprs(d):
            assert not selected_metrics(expr) - known_metrics()


# --- Prometheus rules ----------------------------------------------------------------------------------


def _rule_problems(doc: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    known = known_metrics()
    names: set[str] = set()
    for group in doc["groups"]:
        if not group.get("name") or not group.get("rules"):
            problems.append(f"group without name or rules: {group}")
        for rule in group["rules"]:
            name = rule.get("alert", "?")
            if name in names:
                problems.append(f"{name}: duplicate alert")
            names.add(name)
            if not re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))):
                problems.append(f"{name}: no 'for' duration")
            if rule.get("labels", {}).get("severity") not in ("warning", "critical"):
                problems.append(f"{name}: severity label missing")
            if not {"summary", "description"} <= set(rule.get("annotations", {})):
                problems.append(f"{name}: summary/description annotations missing")
            try:
                unknown = selected_metrics(rule["expr"]) - known
            except (ValueError, KeyError) as exc:
                problems.append(f"{name}: expr does not parse: {exc}")
                continue
            if unknown:
                problems.append(f"{name}: unknown metrics {unknown}")
    return problems


def test_alert_rules_are_complete_and_use_known_metrics() -> None:
    assert _rule_problems(_alerts()) == []


def test_alerts_cover_the_operational_failure_modes() -> None:
    alerts = {r["alert"]: r for r in _alert_rules(_alerts())}
    expected = {
        "RunstreamConsumerLagGrowing": "runstream_consumer_lag",
        "RunstreamDLQRate": "runstream_dlq_messages_total",
        "RunstreamLabelboxErrors": "runstream_labelbox_requests_total",
        "RunstreamNotReady": "runstream_ready",
        "RunstreamNoProgress": "runstream_events_total",
    }
    for alert, metric in expected.items():
        assert metric in selected_metrics(alerts[alert]["expr"]), alert


@pytest.mark.parametrize(
    ("breakage", "needle"),
    [("no-for", "'for'"), ("bad-expr", "parse"), ("unknown-metric", "unknown"), ("no-annotations", "annotations")],
)
def test_rule_check_rejects_broken_copies(breakage: str, needle: str) -> None:
    doc = _alerts()
    rule = doc["groups"][0]["rules"][0]
    if breakage == "no-for":
        del rule["for"]
    elif breakage == "bad-expr":
        rule["expr"] = "sum by (group (runstream_consumer_lag)"
    elif breakage == "unknown-metric":
        rule["expr"] = "runstream_dlq_total > 0"
    else:
        rule["annotations"] = {}
    problems = _rule_problems(doc)
    assert any(needle in p for p in problems), problems


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not on PATH (optional)")
def test_promtool_accepts_the_rules() -> None:
    proc = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
