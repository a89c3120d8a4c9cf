"""The structural event contract, declared once: msgspec Structs that the compiled decoder validates.

Types, required fields, enums, ranges, lengths and unknown-field rules live here; the generated JSON
Schemas (service.events.schema) come from these same declarations. What no schema can say (one of two
spellings, name or schemaId, confidence keys, placement of customMetrics, ...) is checked afterwards on
the typed result (service.events.checks).

Both spellings of a field (Labelbox camelCase and SDK snake_case) are declared as two optional fields;
the checks pick the one given and reject both at once. ``Meta.extra["expect"]`` is how an error message
describes the field's type ("must be a non-empty string, got a number"); other ``extra`` keys override
the wording of one rule (service.events.errors reads them).

Every Struct here and in models.py has ``gc=False``: decoded JSON cannot form reference cycles, and
untracked instances keep the garbage collector's passes off the hot path.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType, field

from service.events.constants import (
    AGGREGATIONS,
    CONFUSION_MATRIX_MAX_COUNT,
    MAX_CONFIDENCE_SCORES,
    MIN_CONFIDENCE_SCORES,
    UUID_PATTERN,
)
from service.events.constants import Aggregation as AggregationName

# Blank (whitespace-only) strings are rejected by the checks (a msgspec pattern runs Python's re per
# string, several times the cost of the rest of the decode); the JSON Schema says it as a pattern.
NonEmptyStr = Annotated[
    str, Meta(min_length=1, extra_json_schema={"pattern": r"\S"}, extra={"expect": "a non-empty string"})
]
UuidStr = Annotated[
    str,
    Meta(
        pattern=UUID_PATTERN,
        description="A UUID (8-4-4-4-12 hexadecimal digits); omitted, a deterministic uuid5 is used.",
        extra={"expect": "a UUID string (8-4-4-4-12 hexadecimal digits)"},
    ),
]
Confidence = Annotated[float, Meta(ge=0, le=1, extra={"expect": "a number between 0 and 1"})]
# Whole numbers written as floats (``3.0``) are counts too; ints stay ints.
Count = Annotated[
    Annotated[int, Meta(ge=0, le=CONFUSION_MATRIX_MAX_COUNT)]
    | Annotated[float, Meta(ge=0, le=CONFUSION_MATRIX_MAX_COUNT, multiple_of=1)],
    Meta(extra={"expect": "an integer count"}),
]
MatrixValue = Annotated[
    tuple[Count, Count, Count, Count],
    Meta(
        description="[TP, FP, TN, FN]",
        extra={"expect": "[TP, FP, TN, FN]", "shape": "a confusion matrix value must be [TP, FP, TN, FN], 4 integers"},
    ),
]
# The key count is a semantic check (checks.py): msgspec cannot combine a length constraint on this
# object with the fixed-length array in the same union, so it is declared for the JSON Schema only.
ConfidenceKeyedEntry = Annotated[float | MatrixValue, Meta(extra={"expect": "a number or [TP, FP, TN, FN]"})]
ConfidenceKeyed = Annotated[
    dict[str, ConfidenceKeyedEntry],
    Meta(
        description="Confidence-keyed values: keys are numbers in [0, 1] written as strings.",
        extra_json_schema={"minProperties": MIN_CONFIDENCE_SCORES, "maxProperties": MAX_CONFIDENCE_SCORES},
    ),
]
MetricValue = Annotated[
    float | MatrixValue | ConfidenceKeyed,
    Meta(extra={"expect": "a number, [TP, FP, TN, FN] or a confidence-keyed object"}),
]
_AGGREGATIONS = ", ".join(AGGREGATIONS)
Aggregation = Annotated[
    AggregationName,
    Meta(extra={"expect": f"a string, one of {_AGGREGATIONS}", "one_of": _AGGREGATIONS}),
]
StringList = Annotated[list[NonEmptyStr], Meta(min_length=1, extra={"expect": "a list of strings"})]


class DataRowRef(Struct, gc=False, frozen=True, forbid_unknown_fields=True):
    """A data row as the event names it; Labelbox needs exactly one of the two identifiers.

    ``global_key_snake`` is the SDK spelling on the wire; parsing moves it to ``global_key``, so a
    parsed reference always has it ``None``.
    """

    id: NonEmptyStr | None = None
    global_key: NonEmptyStr | None = field(default=None, name="globalKey")
    global_key_snake: NonEmptyStr | None = field(default=None, name="global_key")

    def key(self) -> str:
        """Stable key for grouping and upserts: ``id:<id>`` or ``gk:<global key>``."""
        return f"id:{self.id}" if self.id is not None else f"gk:{self.global_key}"

    def to_ndjson(self) -> dict[str, str]:
        return {"id": self.id} if self.id is not None else {"globalKey": self.global_key or ""}


def needs_one_of(*names: str) -> dict[str, Any]:
    """JSON Schema: at least one of these keys is present (the checks also reject null and two spellings)."""
    return {"anyOf": [{"required": [n]} for n in names]}


def needs_all(*groups: dict[str, Any]) -> dict[str, Any]:
    return {"allOf": list(groups)}


_NAMED = needs_one_of("name", "schemaId", "schema_id")

DataRow = Annotated[
    DataRowRef,
    Meta(
        extra_json_schema=needs_one_of("id", "globalKey", "global_key"),
        extra={"expect": "an object with exactly one of id or globalKey"},
    ),
]
Classifications = Annotated[
    list[Annotated["ClassificationWire", Meta(extra_json_schema=_NAMED)]],
    Meta(extra={"expect": "a list of classification objects"}),
]


class CustomMetricWire(Struct, gc=False, forbid_unknown_fields=True):
    name: Annotated[str, Meta(extra={"expect": "a string"})]
    value: float


CustomMetrics = Annotated[
    list[CustomMetricWire], Meta(extra={"expect": 'a list of {"name": str, "value": number}'})
]
class AnswerWire(Struct, gc=False):
    """A radio/checklist answer: name or schemaId, its own confidence, customMetrics and nesting."""

    name: NonEmptyStr | None = None
    schemaId: NonEmptyStr | None = None
    schema_id: NonEmptyStr | None = None
    confidence: Confidence | None = None
    customMetrics: CustomMetrics | None = None
    custom_metrics: CustomMetrics | None = None
    classifications: Classifications | UnsetType = UNSET


NamedAnswer = Annotated[AnswerWire, Meta(extra_json_schema=_NAMED)]
Answer = Annotated[
    str | NamedAnswer | Annotated[list[NamedAnswer], Meta(min_length=1)],
    Meta(
        description="A string (free text), an object (radio) or a non-empty list of objects (checklist).",
        extra={
            "expect": "a string (free text), an object (radio) or a list of objects (checklist)",
            "empty": "a checklist answer must list at least one answer object",
        },
    ),
]


class ClassificationWire(Struct, gc=False):
    """A nested classification: the same placement rules as a top-level classification row."""

    name: NonEmptyStr | None = None
    schemaId: NonEmptyStr | None = None
    schema_id: NonEmptyStr | None = None
    answer: Answer | UnsetType = UNSET
    customMetrics: CustomMetrics | None = None
    custom_metrics: CustomMetrics | None = None
    classifications: Classifications | UnsetType = UNSET


class PredictionRowWire(Struct, gc=False):
    """One Labelbox NDJSON prediction row; fields not declared here (geometry, mask, ...) pass through."""

    dataRow: DataRow | None = None
    data_row: DataRow | None = None
    name: NonEmptyStr | None = None
    schemaId: NonEmptyStr | None = None
    schema_id: NonEmptyStr | None = None
    confidence: Confidence | None = None
    customMetrics: CustomMetrics | None = None
    custom_metrics: CustomMetrics | None = None
    answer: Answer | UnsetType = UNSET
    classifications: Classifications | UnsetType = UNSET
    uuid: UuidStr | None = None


PredictionRowItem = Annotated[
    PredictionRowWire, Meta(extra_json_schema=needs_all(needs_one_of("dataRow", "data_row"), _NAMED))
]
PredictionRows = Annotated[list[PredictionRowItem], Meta(min_length=1, extra={"expect": "a list of prediction rows"})]


class PredictionEventWire(Struct, gc=False, forbid_unknown_fields=True):
    """``{"model_run_id", "predictions": [row, ...]}``, or ``"prediction": row``."""

    model_run_id: NonEmptyStr | None = None
    modelRunId: NonEmptyStr | None = None
    predictions: PredictionRows | None = None
    prediction: PredictionRowItem | None = None


class MetricRowWire(Struct, gc=False, forbid_unknown_fields=True):
    """A ScalarMetric or ConfusionMatrixMetric row, SDK snake_case or NDJSON camelCase."""

    dataRow: DataRow | None = None
    data_row: DataRow | None = None
    metricName: str | None = None
    metric_name: str | None = None
    featureName: str | None = None
    feature_name: str | None = None
    subclassName: str | None = None
    subclass_name: str | None = None
    metricValue: MetricValue | None = None
    value: MetricValue | None = None
    aggregation: Aggregation | None = None
    uuid: UuidStr | None = None
    # The SDK's serializer marks every row of a benchmark label; it describes the label, not the metric,
    # so it is accepted and not part of the metric row that is uploaded or aggregated.
    isBenchmarkReferenceLabel: bool | None = None


MetricRowItem = Annotated[
    MetricRowWire,
    Meta(extra_json_schema=needs_all(needs_one_of("dataRow", "data_row"), needs_one_of("metricValue", "value"))),
]
MetricRows = Annotated[list[MetricRowItem], Meta(min_length=1, extra={"expect": "a list of metrics"})]


class MetricEventWire(Struct, gc=False, forbid_unknown_fields=True):
    """``{"model_run_id", "metrics": [metric, ...]}``."""

    model_run_id: NonEmptyStr | None = None
    modelRunId: NonEmptyStr | None = None
    metrics: MetricRows | None = None


class LabelEventWire(Struct, gc=False, forbid_unknown_fields=True):
    """Mirrors ``ModelRun.upsert_labels`` / ``upsert_data_rows``: exactly one selector."""

    model_run_id: NonEmptyStr | None = None
    modelRunId: NonEmptyStr | None = None
    label_ids: StringList | None = None
    labelIds: StringList | None = None
    project_id: NonEmptyStr | None = None
    projectId: NonEmptyStr | None = None
    data_row_ids: StringList | None = None
    dataRowIds: StringList | None = None
    global_keys: StringList | None = None
    globalKeys: StringList | None = None


_RUN_FIELDS = ("model_run_id", "modelRunId")
_RUN = needs_one_of(*_RUN_FIELDS)
# What the JSON Schema of each whole event adds (service.events.schema).
EVENT_SCHEMA_EXTRA: dict[str, dict[str, Any]] = {
    "prediction": needs_all(_RUN, needs_one_of("predictions", "prediction")),
    "metric": needs_all(_RUN, {"required": ["metrics"]}),
    "label": needs_all(
        _RUN,
        needs_one_of(*(f.encode_name for f in msgspec.structs.fields(LabelEventWire) if f.name not in _RUN_FIELDS)),
    ),
}

EVENT_WIRE: dict[str, type[Struct]] = {
    "prediction": PredictionEventWire,
    "metric": MetricEventWire,
    "label": LabelEventWire,
}

METRIC_EVENT_DECODER = msgspec.json.Decoder(MetricEventWire)
LABEL_EVENT_DECODER = msgspec.json.Decoder(LabelEventWire)
