"""The pipeline panel's document, folded from the consumers' Prometheus samples."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from service.api.pipeline_status import pipeline_status
from service.prometheus import ConsumerMetrics


def test_folds_lag_imports_retries_errors_and_dead_letters() -> None:
    reg = CollectorRegistry()
    m = ConsumerMetrics.create(reg)
    m.consumer_lag.labels("up", "preds", "0").set(5)
    m.consumer_lag.labels("up", "preds", "1").set(7)
    m.consumer_lag.labels("agg", "preds", "0").set(1)
    m.in_flight_batches.labels("up").set(2)
    m.rows_superseded.labels("up").inc(4)
    m.imports_in_flight.labels("up", "running").inc(3)
    m.imports_in_flight.labels("up", "creating").inc()
    m.labelbox_retries.labels("rate_limited").inc(2)
    m.labelbox_requests.labels("modelRun", "2xx").inc(10)
    m.labelbox_requests.labels("createModelErrorAnalysisPredictionImport", "5xx").inc(3)
    m.labelbox_requests.labels("fetchFile", "error").inc()
    m.dlq_messages.labels("up", "labelbox.row_failed").inc(2)
    m.events.labels("agg", "preds", "delivered").inc(9)
    m.events.labels("agg", "mets", "delivered").inc(1)
    m.events.labels("agg", "mets", "dlq").inc(2)
    doc = pipeline_status(reg, {"total": 6, "by_class": {"schema": 4, "json": 2}, "recent": []})
    up = next(g for g in doc["groups"] if g["group"] == "up")
    assert (up["lag"], up["in_flight_batches"], up["superseded_rows"]) == (12, 2, 4)
    agg = next(g for g in doc["groups"] if g["group"] == "agg")
    assert (agg["lag"], agg["events"]) == (1, {"delivered": 10, "dlq": 2})
    assert up["events"] == {}
    assert doc["imports"] == {"creating": 1, "running": 3}
    assert doc["retries"] == {"rate_limited": 2}
    assert doc["labelbox"]["requests_by_status"] == {"2xx": 10, "5xx": 3, "error": 1}
    assert doc["labelbox"]["errors"] == {"5xx": {"createModelErrorAnalysisPredictionImport": 3},
                                         "error": {"fetchFile": 1}}  # fmt: skip
    assert doc["dlq_written_here"] == {"labelbox.row_failed": 2}
    assert doc["dlq"] == {"total": 6, "by_class": {"schema": 4, "json": 2}}


def test_empty_registry_and_no_monitor() -> None:
    doc = pipeline_status(CollectorRegistry())
    assert doc == {"groups": [], "imports": {}, "retries": {}, "labelbox": {"requests_by_status": {}, "errors": {}},
                   "dlq_written_here": {}, "dlq": None}  # fmt: skip
