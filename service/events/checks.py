"""The semantic rules no schema expresses, as cheap checks on the typed (already structurally valid) result.

- one spelling per field: camelCase or snake_case, never both;
- a data row reference has exactly one of ``id`` / ``globalKey``;
- a prediction row (and every answer and nested classification) has ``name`` or ``schemaId``;
- ``customMetrics`` are not allowed on masks, and on radio/checklist classifications they belong inside
  each answer;
- at most ``ANNOTATION_PER_LABEL_LIMIT`` rows per data row and name in one event;
- metric rows: value and aggregation agree (a confusion matrix only with ``CONFUSION_MATRIX``), a
  confusion matrix has a metric name, scalar metric names are not reserved, confidence keys are numbers
  in [0, 1] without repeats, 2–15 of them;
- a label event names exactly one selector.

Each failure is an EventValidationError naming the field path the producer wrote.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from msgspec import UNSET

from service.errors import EventValidationError
from service.events.constants import (
    ANNOTATION_PER_LABEL_LIMIT,
    CONFUSION_MATRIX_AGGREGATION,
    MAX_CONFIDENCE_SCORES,
    MIN_CONFIDENCE_SCORES,
    RESERVED_METRIC_NAMES,
)
from service.events.errors import confidence_count_error, join, type_name
from service.events.models import (
    ConfusionMatrixMetricRow,
    LabelEvent,
    MetricEvent,
    MetricRow,
    PredictionEvent,
    PredictionRow,
    ScalarMetricRow,
)
from service.events.wire import (
    AnswerWire,
    ClassificationWire,
    DataRowRef,
    LabelEventWire,
    MetricEventWire,
    MetricRowWire,
    PredictionEventWire,
    PredictionRowWire,
)

_RESERVED = frozenset(RESERVED_METRIC_NAMES)
_CM = CONFUSION_MATRIX_AGGREGATION


def _twice(path: str, camel: str, snake: str) -> EventValidationError:
    return EventValidationError(join(path, camel), f"given twice, as {camel} and {snake}; use one of them")


def data_row(ref: DataRowRef, path: str) -> DataRowRef:
    if ref.global_key_snake is not None:
        if ref.global_key is not None:
            raise _twice(path, "globalKey", "global_key")
        ref = DataRowRef(ref.id, ref.global_key_snake)
    if ref.id is None:
        if ref.global_key is None:
            raise EventValidationError(path, "must have exactly one of id or globalKey, got neither")
    elif ref.global_key is not None:
        raise EventValidationError(path, "must have exactly one of id or globalKey, got both")
    return ref


def model_run_id(camel: str | None, snake: str | None) -> str:
    if camel is not None:
        if snake is not None:
            raise _twice("", "modelRunId", "model_run_id")
        return camel
    if snake is None:
        raise EventValidationError("model_run_id", "is required (the Labelbox model run id)")
    return snake


# -------------------------------------------------------------------------------- predictions


def _node(node: AnswerWire | ClassificationWire | PredictionRowWire, path: str) -> tuple[Any, Any]:
    """name/schemaId and customMetrics of one node, each in one spelling."""
    schema_id = node.schemaId
    if node.schema_id is not None:
        if schema_id is not None:
            raise _twice(path, "schemaId", "schema_id")
        schema_id = node.schema_id
    if node.name is None and schema_id is None:
        raise EventValidationError(path, "must have name or schemaId, got neither")
    cms = node.customMetrics
    if node.custom_metrics is not None:
        if cms is not None:
            raise _twice(path, "customMetrics", "custom_metrics")
        cms = node.custom_metrics
    return schema_id, cms


def _classification_body(node: ClassificationWire | PredictionRowWire, cms: Any, path: str, *, is_mask: bool) -> None:
    answer = node.answer
    if answer is not UNSET and not isinstance(answer, str):
        if isinstance(answer, list):
            for i, a in enumerate(answer):
                _answer(a, f"{path}.answer[{i}]")
        else:
            _answer(answer, f"{path}.answer")
    if cms is not None:
        if is_mask:
            raise EventValidationError(
                f"{path}.customMetrics",
                "custom metrics are not supported on raster segmentation (mask) rows; remove customMetrics",
            )
        if answer is not UNSET and not isinstance(answer, str):
            raise EventValidationError(
                f"{path}.customMetrics",
                "on a radio or checklist classification, customMetrics belong inside each answer, "
                "not at the top level of the row",
            )
    if node.classifications is not UNSET:
        for i, c in enumerate(node.classifications):
            p = f"{path}.classifications[{i}]"
            _, c_cms = _node(c, p)
            _classification_body(c, c_cms, p, is_mask=False)


def _answer(node: AnswerWire, path: str) -> None:
    _node(node, path)
    if node.classifications is not UNSET:
        for i, c in enumerate(node.classifications):
            p = f"{path}.classifications[{i}]"
            _, c_cms = _node(c, p)
            _classification_body(c, c_cms, p, is_mask=False)


def prediction_row(w: PredictionRowWire, raw: dict[str, Any], mrid: str, path: str) -> PredictionRow:
    ref = w.dataRow
    if w.data_row is not None:
        if ref is not None:
            raise _twice(path, "dataRow", "data_row")
        ref = w.data_row
    if ref is None:
        raise EventValidationError(f"{path}.dataRow", "is required")
    if ref.global_key_snake is not None or (ref.id is None) is (ref.global_key is None):
        ref = data_row(ref, f"{path}.dataRow")
    schema_id, cms = _node(w, path)
    is_mask = "mask" in raw
    if w.answer is not UNSET or w.classifications is not UNSET or (cms is not None and is_mask):
        _classification_body(w, cms, path, is_mask=is_mask)
    return PredictionRow(ref, w.name, schema_id, w.confidence, is_mask, raw, mrid, w.uuid)


def prediction_event(w: PredictionEventWire, doc: dict[str, Any]) -> PredictionEvent:
    mrid = model_run_id(w.modelRunId, w.model_run_id)
    many = w.predictions
    if many is not None:
        if w.prediction is not None:
            raise EventValidationError(
                "predictions", "give either predictions (a list) or prediction (one row), not both"
            )
        raws = doc["predictions"]
        rows = [prediction_row(r, raws[i], mrid, f"predictions[{i}]") for i, r in enumerate(many)]
        if len(rows) > ANNOTATION_PER_LABEL_LIMIT:
            _check_per_label_limit(rows)
    elif w.prediction is not None:
        rows = [prediction_row(w.prediction, doc["prediction"], mrid, "prediction")]
    else:
        raise EventValidationError(
            "predictions", "is required (a non-empty list of rows, or prediction with one row)"
        )
    return PredictionEvent(mrid, rows)


def _check_per_label_limit(rows: list[PredictionRow]) -> None:
    counts: Counter[tuple[str, str]] = Counter()
    for i, row in enumerate(rows):
        if row.name is None:
            continue
        key = (row.data_row.key(), row.name)
        counts[key] += 1
        if counts[key] > ANNOTATION_PER_LABEL_LIMIT:
            raise EventValidationError(
                f"predictions[{i}]",
                f"more than {ANNOTATION_PER_LABEL_LIMIT} rows for data row {key[0]} and name {key[1]!r} "
                "in one event (Labelbox's per-label annotation limit)",
            )


# -------------------------------------------------------------------------------- metrics


def _confidence_key(key: str, path: str) -> float:
    try:
        f = float(key)
    except (ValueError, OverflowError):
        raise EventValidationError(path, f"confidence keys must be numbers in [0, 1], got {key!r}") from None
    if not (math.isfinite(f) and 0.0 <= f <= 1.0):
        raise EventValidationError(path, f"confidence keys must be numbers in [0, 1], got {key!r}")
    return f


def _confidence_keyed(value: dict[str, Any], path: str) -> list[tuple[float, Any, str]]:
    n = len(value)
    if not MIN_CONFIDENCE_SCORES <= n <= MAX_CONFIDENCE_SCORES:
        raise confidence_count_error(path, n)
    out: list[tuple[float, Any, str]] = []
    seen: set[float] = set()
    for k, v in value.items():
        f = _confidence_key(k, path)
        if f in seen:
            raise EventValidationError(path, f"confidence key {k!r} repeats the confidence {f}")
        seen.add(f)
        out.append((f, v, f'{path}["{k}"]'))
    return out


def _matrix(value: Any, path: str) -> tuple[int, int, int, int]:
    if type(value) is not tuple:
        raise EventValidationError(
            path, f"a confusion matrix value must be [TP, FP, TN, FN], 4 integers; got {type_name(value)}"
        )
    a, b, c, d = value
    return (int(a), int(b), int(c), int(d))


def _scalar_entry(value: Any, path: str) -> float:
    if type(value) is not float:
        raise EventValidationError(path, f"must be a number, got {type_name(value)}")
    return value


_SNAKE_ONLY = ("data_row", "metric_name", "feature_name", "subclass_name", "value")


def metric_row(w: MetricRowWire, mrid: str, path: str) -> MetricRow:
    ref = w.dataRow
    metric_name = w.metricName
    feature_name = w.featureName
    subclass_name = w.subclassName
    value: Any = w.metricValue
    camel = ref is not None or value is not None
    names = ["dataRow", "metricName", "featureName", "subclassName", "metricValue"]
    if w.data_row is not None or w.metric_name is not None or w.feature_name is not None or (
        w.subclass_name is not None or w.value is not None
    ):
        pairs = (
            (ref, w.data_row),
            (metric_name, w.metric_name),
            (feature_name, w.feature_name),
            (subclass_name, w.subclass_name),
            (value, w.value),
        )
        chosen: list[Any] = []
        for i, (c, s) in enumerate(pairs):
            if s is not None:
                if c is not None:
                    raise _twice(path, names[i], _SNAKE_ONLY[i])
                names[i] = _SNAKE_ONLY[i]
                chosen.append(s)
            else:
                chosen.append(c)
                if c is None and not camel:
                    names[i] = _SNAKE_ONLY[i]
        ref, metric_name, feature_name, subclass_name, value = chosen
    if ref is None:
        raise EventValidationError(f"{path}.{names[0]}", "is required")
    if ref.global_key_snake is not None or (ref.id is None) is (ref.global_key is None):
        ref = data_row(ref, f"{path}.{names[0]}")
    if value is None:
        raise EventValidationError(f"{path}.{names[4]}", "is required")
    aggregation: Any = w.aggregation
    tv = type(value)
    if tv is float:
        if aggregation is None:
            aggregation = "ARITHMETIC_MEAN"
        elif aggregation == _CM:
            raise EventValidationError(
                f"{path}.{names[4]}", "a confusion matrix value must be [TP, FP, TN, FN], 4 integers; got a number"
            )
        if metric_name is not None and metric_name.lower().strip() in _RESERVED:
            _reserved(metric_name, f"{path}.{names[1]}")
        return ScalarMetricRow(
            data_row=ref,
            feature_name=feature_name,
            subclass_name=subclass_name,
            model_run_id=mrid,
            given_uuid=w.uuid,
            metric_name=metric_name,
            value=value,
            aggregation=aggregation,
        )
    vpath = f"{path}.{names[4]}"
    if tv is tuple or aggregation == _CM or any(type(v) is tuple for v in value.values()):
        if aggregation is not None and aggregation != _CM:
            raise EventValidationError(
                f"{path}.aggregation", f"a confusion matrix metric only accepts CONFUSION_MATRIX, got {aggregation!r}"
            )
        if metric_name is None:
            raise EventValidationError(f"{path}.{names[1]}", "is required for a confusion matrix metric")
        cm_value: Any
        if tv is dict:
            cm_value = {k: _matrix(v, p) for k, v, p in _confidence_keyed(value, vpath)}
        else:
            cm_value = _matrix(value, vpath)
        return ConfusionMatrixMetricRow(
            data_row=ref,
            feature_name=feature_name,
            subclass_name=subclass_name,
            model_run_id=mrid,
            given_uuid=w.uuid,
            metric_name=metric_name,
            value=cm_value,
        )
    if aggregation is None:
        aggregation = "ARITHMETIC_MEAN"
    if metric_name is not None and metric_name.lower().strip() in _RESERVED:
        _reserved(metric_name, f"{path}.{names[1]}")
    return ScalarMetricRow(
        data_row=ref,
        feature_name=feature_name,
        subclass_name=subclass_name,
        model_run_id=mrid,
        given_uuid=w.uuid,
        metric_name=metric_name,
        value={k: _scalar_entry(v, p) for k, v, p in _confidence_keyed(value, vpath)},
        aggregation=aggregation,
    )


def _reserved(metric_name: str, path: str) -> None:
    clean = metric_name.lower().strip()
    raise EventValidationError(
        path,
        f"{clean!r} is a reserved metric name (reserved: {', '.join(RESERVED_METRIC_NAMES)}); choose another name",
    )


def metric_event(w: MetricEventWire) -> MetricEvent:
    mrid = model_run_id(w.modelRunId, w.model_run_id)
    metrics = w.metrics
    if metrics is None:
        raise EventValidationError("metrics", "is required (a non-empty list of metrics)")
    return MetricEvent(mrid, [metric_row(m, mrid, f"metrics[{i}]") for i, m in enumerate(metrics)])


# -------------------------------------------------------------------------------- labels

_SELECTORS = (
    ("labelIds", "label_ids"),
    ("projectId", "project_id"),
    ("dataRowIds", "data_row_ids"),
    ("globalKeys", "global_keys"),
)


def label_event(w: LabelEventWire) -> LabelEvent:
    mrid = model_run_id(w.modelRunId, w.model_run_id)
    chosen: list[tuple[str, str, Any]] = []
    for camel, snake in _SELECTORS:
        c = getattr(w, camel)
        s = getattr(w, snake)
        if c is not None:
            if s is not None:
                raise _twice("", camel, snake)
            chosen.append((snake, camel, c))
        elif s is not None:
            chosen.append((snake, snake, s))
    if len(chosen) != 1:
        got = "none" if not chosen else ", ".join(k for _, k, _ in chosen)
        raise EventValidationError(
            "label_ids" if not chosen else chosen[1][1],
            f"a label event needs exactly one of label_ids, project_id, data_row_ids, global_keys; got {got}",
        )
    field, _, value = chosen[0]
    return LabelEvent(model_run_id=mrid, **{field: value})
