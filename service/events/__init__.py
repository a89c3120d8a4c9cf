"""The event contract: parse, validate and serialize prediction, metric and label events.

The contract is declared once (``wire``: msgspec Structs, validated by msgspec's compiled decoder and
published as JSON Schema by ``schema``); the rules no schema expresses are cheap checks on the typed
result (``checks``); errors name the field path and the rule (``errors``). docs/EVENTS.md describes the
contract for producers. Deterministic uuids: see ``service.events.uuids``.

Modules: ``constants`` (limits, names), ``wire`` (structure), ``checks`` (semantics), ``errors``
(messages), ``decode`` (bytes/dicts to Structs), ``models`` (typed results), ``ndjson`` (the NDJSON
form of a prediction row), ``uuids``, ``parse`` (entry points), ``upload`` (``parse_upload``),
``schema`` (JSON Schema).
"""

from __future__ import annotations

from service.events.constants import (
    ANNOTATION_PER_LABEL_LIMIT,
    CONFUSION_MATRIX_AGGREGATION,
    CONFUSION_MATRIX_MAX_COUNT,
    MAX_CONFIDENCE_SCORES,
    METRIC_UUID_NAMESPACE,
    MIN_CONFIDENCE_SCORES,
    PREDICTION_UUID_NAMESPACE,
    RESERVED_METRIC_NAMES,
    SCALAR_AGGREGATIONS,
    ConfusionMatrixValue,
    EventKind,
    ScalarAggregation,
)
from service.events.models import (
    ConfusionMatrixMetricRow,
    CustomMetricLeaf,
    DataRowRef,
    Event,
    LabelEvent,
    MetricEvent,
    MetricRow,
    PredictionEvent,
    PredictionRow,
    ScalarMetricRow,
    UploadRows,
)
from service.events.parse import parse_event, parse_metric_row, parse_ndjson_row, parse_prediction_row
from service.events.upload import parse_upload

__all__ = [
    "ANNOTATION_PER_LABEL_LIMIT",
    "CONFUSION_MATRIX_AGGREGATION",
    "CONFUSION_MATRIX_MAX_COUNT",
    "MAX_CONFIDENCE_SCORES",
    "METRIC_UUID_NAMESPACE",
    "MIN_CONFIDENCE_SCORES",
    "PREDICTION_UUID_NAMESPACE",
    "RESERVED_METRIC_NAMES",
    "SCALAR_AGGREGATIONS",
    "ConfusionMatrixMetricRow",
    "ConfusionMatrixValue",
    "CustomMetricLeaf",
    "DataRowRef",
    "Event",
    "EventKind",
    "LabelEvent",
    "MetricEvent",
    "MetricRow",
    "PredictionEvent",
    "PredictionRow",
    "ScalarAggregation",
    "ScalarMetricRow",
    "UploadRows",
    "parse_event",
    "parse_metric_row",
    "parse_ndjson_row",
    "parse_prediction_row",
    "parse_upload",
]
