"""The upload side at a glance (GET /v1/pipeline, the dashboard's pipeline panel), from Prometheus samples.

The consumers already count everything an operator asks about (lag, batches and imports in flight,
retries, Labelbox answers, superseded rows); this folds this process's registry into one small JSON
document instead of making the dashboard parse the text exposition. Dead letters come from the DLQ
monitor (the topic's truth, all replicas) when one runs here. Pure: registry and DLQ stats in, dict out.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from prometheus_client import CollectorRegistry

__all__ = ["pipeline_status"]

_PER_GROUP = {
    "runstream_consumer_lag": "lag",
    "runstream_consumer_lag_stored": "lag_stored",
    "runstream_in_flight_batches": "in_flight_batches",
    "runstream_buffered_bytes": "buffered_bytes",
    "runstream_fetch_paused": "paused",
    "runstream_ready": "ready",
    "runstream_rows_superseded_total": "superseded_rows",
}


def _num(v: float) -> int | float:
    return int(v) if float(v).is_integer() else v


def pipeline_status(registry: CollectorRegistry, dlq: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"groups": [...], "imports": {state: n}, "retries": {reason: n}, "labelbox": {...}, "dlq": ...}``."""
    groups: dict[str, dict[str, int | float]] = defaultdict(dict)
    events: dict[str, dict[str, int | float]] = defaultdict(dict)  # group -> outcome -> messages
    imports: dict[str, int | float] = {}
    retries: dict[str, int | float] = {}
    requests: dict[str, int | float] = defaultdict(int)
    errors: dict[str, dict[str, int | float]] = defaultdict(dict)
    dlq_written: dict[str, int | float] = defaultdict(int)
    for family in registry.collect():
        for s in family.samples:
            name, labels, value = s.name, s.labels, s.value
            field = _PER_GROUP.get(name)
            if field is not None and "group" in labels:
                g = groups[labels["group"]]
                g[field] = _num(g.get(field, 0) + value)
            elif name == "runstream_events_total" and "group" in labels:
                by_outcome = events[labels["group"]]
                by_outcome[labels["outcome"]] = _num(by_outcome.get(labels["outcome"], 0) + value)
                groups.setdefault(labels["group"], {})  # a group with only events is listed too
            elif name == "runstream_imports_in_flight":
                imports[labels["state"]] = _num(imports.get(labels["state"], 0) + value)
            elif name == "runstream_labelbox_retries_total":
                retries[labels["reason"]] = _num(value)
            elif name == "runstream_labelbox_requests_total":
                cls = labels["status_class"]
                requests[cls] = _num(requests[cls] + value)
                if cls != "2xx" and value:
                    errors[cls][labels["operation"]] = _num(value)
            elif name == "runstream_dlq_messages_total":
                dlq_written[labels["error_class"]] = _num(dlq_written[labels["error_class"]] + value)
    return {
        "groups": [
            {"group": g, **dict(sorted(v.items())), "events": dict(sorted(events[g].items()))}
            for g, v in sorted(groups.items())
        ],
        "imports": dict(sorted(imports.items())),
        "retries": dict(sorted(retries.items())),
        "labelbox": {
            "requests_by_status": dict(sorted(requests.items())),
            "errors": {k: dict(sorted(v.items())) for k, v in sorted(errors.items())},
        },
        "dlq_written_here": dict(sorted(dlq_written.items())),
        "dlq": None if dlq is None else {"total": dlq.get("total", 0), "by_class": dlq.get("by_class", {})},
    }
