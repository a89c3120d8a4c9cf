"""The numbers and names of the event contract (Labelbox's limits and reserved words)."""

from __future__ import annotations

import uuid as _uuid
from typing import Literal, TypeAlias, get_args

EventKind = Literal["prediction", "metric", "label"]
# The one table of aggregation names: the contract, the math (service.aggregation) and the API use these.
ScalarAggregation = Literal["ARITHMETIC_MEAN", "GEOMETRIC_MEAN", "HARMONIC_MEAN", "SUM"]
Aggregation = Literal[ScalarAggregation, "CONFUSION_MATRIX"]
ConfusionMatrixValue: TypeAlias = tuple[int, int, int, int]

AGGREGATIONS: tuple[Aggregation, ...] = get_args(Aggregation)
SCALAR_AGGREGATIONS: frozenset[str] = frozenset(get_args(ScalarAggregation))
CONFUSION_MATRIX_AGGREGATION: Aggregation = "CONFUSION_MATRIX"
DEFAULT_AGGREGATION: ScalarAggregation = "ARITHMETIC_MEAN"  # Labelbox's default, and customMetrics' (DESIGN §4.4)
RESERVED_METRIC_NAMES: tuple[str, ...] = (
    "true_positive_count",
    "false_positive_count",
    "true_negative_count",
    "false_negative_count",
    "precision",
    "recall",
    "f1",
    "iou",
)
MIN_CONFIDENCE_SCORES = 2
MAX_CONFIDENCE_SCORES = 15
CONFUSION_MATRIX_MAX_COUNT = 10_000_000_000
ANNOTATION_PER_LABEL_LIMIT = 5000

PREDICTION_UUID_NAMESPACE = _uuid.UUID("5b0c3a4e-6f1d-4c62-9a57-2f4e1d0b7c11")
METRIC_UUID_NAMESPACE = _uuid.UUID("a3f1c2d4-8e5b-4b7a-9c3d-1e2f3a4b5c6d")

# A Labelbox annotation uuid: RFC 4122 text form, any case.
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
