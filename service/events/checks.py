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
from typing import Any, Literal

from msgspec import UNSET

from service.errors import EventValidationError
from service.events.constants import (
    ANNOTATION_PER_LABEL_LIMIT,
    DEFAULT_AGGREGATION,
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
_CM: Literal["CONFUSION_MATRIX"] = "CONFUSION_MATRIX"


def _twice(path: str, camel: str, snake: str) -> EventValidationError:
    return EventValidationError(join(path, camel), f"given twice, as {camel} and {snake}; use one of them")


def _ppath(where: str | int) -> str:
    """Row paths are built only for an error: an int is the row's index in the event."""
    return where if type(where) is str else f"predictions[{where}]"


def _mpath(where: str | int) -> str:
    return where if type(where) is str else f"metrics[{where}]"


def _blank(path: str) -> EventValidationError:
    return EventValidationError(path, "must be a non-empty string, got a blank one")


def data_row(ref: DataRowRef, path: str) -> DataRowRef:
    """The reference with one identifier, the SDK spelling of the global key moved to ``global_key``."""
    snake = ref.global_key_snake
    if snake is not None:
        if ref.global_key is not None:
            raise _twice(path, "globalKey", "global_key")
        ref = DataRowRef(ref.id, snake)
    dr_id = ref.id
    if dr_id is None:
        if ref.global_key is None:
            raise EventValidationError(path, "must have exactly one of id or globalKey, got neither")
        if ref.global_key.isspace():
            raise _blank(f"{path}.{'global_key' if snake is not None else 'globalKey'}")
    elif ref.global_key is not None:
        raise EventValidationError(path, "must have exactly one of id or globalKey, got both")
    elif dr_id.isspace():
        raise _blank(f"{path}.id")
    return ref


def model_run_id(camel: str | None, snake: str | None) -> str:
    if camel is not None:
        if snake is not None:
            raise _twice("", "modelRunId", "model_run_id")
        if camel.isspace():
            raise _blank("modelRunId")
        return camel
    if snake is None:
        raise EventValidationError("model_run_id", "is required (the Labelbox model run id)")
    if snake.isspace():
        raise _blank("model_run_id")
    return snake


# -------------------------------------------------------------------------------- predictions


def _node(node: AnswerWire | ClassificationWire | PredictionRowWire, path: str | int) -> tuple[Any, Any]:
    """name/schemaId and customMetrics of one node, each in one spelling."""
    schema_id = node.schemaId
    if node.schema_id is not None:
        if schema_id is not None:
            raise _twice(_ppath(path), "schemaId", "schema_id")
        schema_id = node.schema_id
        if schema_id.isspace():
            raise _blank(f"{_ppath(path)}.schema_id")
    elif schema_id is not None and schema_id.isspace():
        raise _blank(f"{_ppath(path)}.schemaId")
    name = node.name
    if name is None:
        if schema_id is None:
            raise EventValidationError(_ppath(path), "must have name or schemaId, got neither")
    elif name.isspace():
        raise _blank(f"{_ppath(path)}.name")
    cms = node.customMetrics
    if node.custom_metrics is not None:
        if cms is not None:
            raise _twice(_ppath(path), "customMetrics", "custom_metrics")
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


def prediction_row(w: PredictionRowWire, raw: dict[str, Any], mrid: str, path: str | int) -> PredictionRow:
    ref = w.dataRow
    if w.data_row is not None:
        if ref is not None:
            raise _twice(_ppath(path), "dataRow", "data_row")
        ref = w.data_row
    if ref is None:
        raise EventValidationError(f"{_ppath(path)}.dataRow", "is required")
    # The common case (exactly one identifier, not blank) skips the full data-row check.
    gk = ref.global_key
    if ref.global_key_snake is not None or (ref.id is None) is (gk is None) or (ref.id or gk or "").isspace():
        ref = data_row(ref, f"{_ppath(path)}.dataRow")
    name = w.name
    schema_id = w.schemaId
    cms = w.customMetrics
    if (
        w.schema_id is not None
        or w.custom_metrics is not None
        or (schema_id.isspace() if schema_id is not None else name is None)
        or (name is not None and name.isspace())
    ):
        schema_id, cms = _node(w, path)
    is_mask = "mask" in raw
    if w.answer is not UNSET or w.classifications is not UNSET or (cms is not None and is_mask):
        _classification_body(w, cms, _ppath(path), is_mask=is_mask)
    return PredictionRow(ref, name, schema_id, w.confidence, is_mask, raw, mrid, w.uuid)


def prediction_event(w: PredictionEventWire, doc: dict[str, Any]) -> PredictionEvent:
    mrid = w.model_run_id
    if mrid is None or w.modelRunId is not None or mrid.isspace():
        mrid = model_run_id(w.modelRunId, w.model_run_id)
    many = w.predictions
    if many is not None:
        if w.prediction is not None:
            raise EventValidationError(
                "predictions", "give either predictions (a list) or prediction (one row), not both"
            )
        raws = doc["predictions"]
        if len(many) == 1:
            return PredictionEvent(mrid, [prediction_row(many[0], raws[0], mrid, 0)])
        rows: list[PredictionRow] = []
        append = rows.append
        for i in range(len(many)):  # a plain loop: cheaper per event than a comprehension over enumerate/zip
            append(prediction_row(many[i], raws[i], mrid, i))
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


# Key tuples of confidence-keyed values accepted before (count, range, no repeated confidence): they
# repeat from message to message, so one lookup replaces the per-key checks.
_keysets: dict[tuple[str, ...], bool] = {}
_keyset_get = _keysets.get
_sum = sum
_isspace = str.isspace


def _confidence_key(key: str) -> float | None:
    """The confidence a key stands for; None when it is not a number in [0, 1]."""
    try:
        f = float(key)
    except (ValueError, OverflowError):
        return None
    if not (math.isfinite(f) and 0.0 <= f <= 1.0):
        return None
    return f


def _vpath(w: MetricRowWire, path: str | int) -> str:
    return f"{_mpath(path)}.{_spelling(w, 4)}"


def _check_confidence_keys(value: dict[str, Any], w: MetricRowWire, path: str | int) -> None:
    """The key count, the key range and repeated confidences; an accepted key tuple is remembered."""
    n = len(value)
    if not MIN_CONFIDENCE_SCORES <= n <= MAX_CONFIDENCE_SCORES:
        raise confidence_count_error(_vpath(w, path), n)
    confidences = set()
    for k in value:
        f = _confidence_key(k)
        if f is None:
            raise EventValidationError(_vpath(w, path), f"confidence keys must be numbers in [0, 1], got {k!r}")
        confidences.add(f)
    if len(confidences) != n:
        seen: set[float] = set()
        for k in value:
            f = float(k)  # every key parsed above
            if f in seen:
                raise EventValidationError(_vpath(w, path), f"confidence key {k!r} repeats the confidence {f}")
            seen.add(f)
    if len(_keysets) > 4096:
        _keysets.clear()
    _keysets[tuple(value)] = True


def _matrix_entries(value: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """A confidence-keyed value's entries that are matrices are counted (the rest are numbers); when
    every entry is a matrix, counts written as floats become ints."""
    vals = value.values()
    for first in vals:  # noqa: B007 - the first entry
        break
    if type(first) is float:
        try:
            _sum(vals)  # numbers only (a matrix among them is a TypeError)
            return value, 0
        except TypeError:
            pass
    else:
        try:
            flat = _sum(vals, ())  # matrices only (a number among them is a TypeError)
        except TypeError:
            pass
        else:
            if type(_sum(flat)) is not int:
                value = {k: (int(a), int(b), int(c), int(d)) for k, (a, b, c, d) in value.items()}
            return value, len(value)
    return value, sum(1 for v in vals if type(v) is tuple)


def _entry_error(value: dict[str, Any], want: type, where: str) -> EventValidationError:
    """Name the first entry of a confidence-keyed value that is not a ``want`` (a number or a matrix)."""
    for k, v in value.items():
        if type(v) is not want:
            if want is tuple:
                reason = f"a confusion matrix value must be [TP, FP, TN, FN], 4 integers; got {type_name(v)}"
            else:
                reason = f"must be a number, got {type_name(v)}"
            return EventValidationError(f'{where}["{k}"]', reason)
    raise AssertionError("no entry of the wrong type")  # pragma: no cover - callers found one


_CAMEL_NAMES = ("dataRow", "metricName", "featureName", "subclassName", "metricValue")
_SNAKE_NAMES = ("data_row", "metric_name", "feature_name", "subclass_name", "value")
_reserved_seen: dict[str, bool] = {}
_reserved_get = _reserved_seen.get


def _is_reserved(metric_name: str) -> bool:
    """Metric names repeat in every row: remember the answer (bounded)."""
    hit = _reserved_seen.get(metric_name)
    if hit is None:
        if len(_reserved_seen) > 4096:
            _reserved_seen.clear()
        hit = _reserved_seen[metric_name] = metric_name.lower().strip() in _RESERVED
    return hit


def _spelling(w: MetricRowWire, i: int) -> str:
    """How the producer spelled field ``i`` of this row; a missing one in the spelling the row uses."""
    camel = getattr(w, _CAMEL_NAMES[i])
    snake = getattr(w, _SNAKE_NAMES[i])
    if camel is not None:
        return _CAMEL_NAMES[i]
    if snake is not None:
        return _SNAKE_NAMES[i]
    if any(getattr(w, n) is not None for n in _SNAKE_NAMES) and w.dataRow is None and w.metricValue is None:
        return _SNAKE_NAMES[i]
    return _CAMEL_NAMES[i]


def _mixed(w: MetricRowWire, path: str) -> tuple[Any, ...]:
    """A row with both spellings in it: each field in one of them, never both."""
    out: list[Any] = []
    for c, s in zip(_CAMEL_NAMES, _SNAKE_NAMES, strict=True):
        cv = getattr(w, c)
        sv = getattr(w, s)
        if cv is not None and sv is not None:
            raise _twice(path, c, s)
        out.append(cv if cv is not None else sv)
    return tuple(out)


def metric_row(w: MetricRowWire, mrid: str, path: str | int) -> MetricRow:
    ref = w.dataRow
    metric_name = w.metricName
    feature_name = w.featureName
    subclass_name = w.subclassName
    value: Any = w.metricValue
    if (
        w.data_row is not None
        or w.metric_name is not None
        or w.feature_name is not None
        or w.subclass_name is not None
        or w.value is not None
    ):
        if ref is None and metric_name is None and feature_name is None and subclass_name is None and value is None:
            ref = w.data_row
            metric_name = w.metric_name
            feature_name = w.feature_name
            subclass_name = w.subclass_name
            value = w.value
        else:
            ref, metric_name, feature_name, subclass_name, value = _mixed(w, _mpath(path))
    if ref is None:
        raise EventValidationError(f"{_mpath(path)}.{_spelling(w, 0)}", "is required")
    gk = ref.global_key  # as in prediction_row
    if ref.global_key_snake is not None or (ref.id is None) is (gk is None) or (ref.id or gk or "").isspace():
        ref = data_row(ref, f"{_mpath(path)}.{_spelling(w, 0)}")
    if value is None:
        raise EventValidationError(f"{_mpath(path)}.{_spelling(w, 4)}", "is required")
    aggregation: Any = w.aggregation
    tv = type(value)
    if tv is float:
        if aggregation is None:
            aggregation = DEFAULT_AGGREGATION
        elif aggregation == _CM:
            raise EventValidationError(
                f"{_mpath(path)}.{_spelling(w, 4)}",
                "a confusion matrix value must be [TP, FP, TN, FN], 4 integers; got a number",
            )
        if metric_name is not None:
            reserved = _reserved_get(metric_name)
            if reserved is None:
                reserved = _is_reserved(metric_name)
            if reserved:
                _reserved(metric_name, f"{_mpath(path)}.{_spelling(w, 1)}")
        return ScalarMetricRow(ref, feature_name, subclass_name, mrid, w.uuid, None, metric_name, value, aggregation)
    if tv is tuple and (aggregation is None or aggregation == _CM) and metric_name is not None:
        if type(_sum(value)) is not int:  # a count written as a float (3.0) makes the sum a float
            a, b, c, d = value
            value = (int(a), int(b), int(c), int(d))
        return ConfusionMatrixMetricRow(ref, feature_name, subclass_name, mrid, w.uuid, None, metric_name, value, _CM)

    if tv is tuple:
        keyed: Any = value
        matrices = 1
    else:
        if _keyset_get(tuple(value)) is None:
            _check_confidence_keys(value, w, path)
        keyed, matrices = _matrix_entries(value)
    if matrices or aggregation == _CM:
        if aggregation is not None and aggregation != _CM:
            raise EventValidationError(
                f"{_mpath(path)}.aggregation",
                f"a confusion matrix metric only accepts CONFUSION_MATRIX, got {aggregation!r}",
            )
        if metric_name is None:
            raise EventValidationError(f"{_mpath(path)}.{_spelling(w, 1)}", "is required for a confusion matrix metric")
        if matrices != len(keyed):
            raise _entry_error(value, tuple, _vpath(w, path))
        return ConfusionMatrixMetricRow(ref, feature_name, subclass_name, mrid, w.uuid, None, metric_name, keyed, _CM)
    if aggregation is None:
        aggregation = DEFAULT_AGGREGATION
    if metric_name is not None:
        reserved = _reserved_get(metric_name)
        if reserved is None:
            reserved = _is_reserved(metric_name)
        if reserved:
            _reserved(metric_name, f"{_mpath(path)}.{_spelling(w, 1)}")
    return ScalarMetricRow(ref, feature_name, subclass_name, mrid, w.uuid, None, metric_name, keyed, aggregation)


def _reserved(metric_name: str, path: str) -> None:
    clean = metric_name.lower().strip()
    raise EventValidationError(
        path,
        f"{clean!r} is a reserved metric name (reserved: {', '.join(RESERVED_METRIC_NAMES)}); choose another name",
    )


def metric_event(w: MetricEventWire) -> MetricEvent:
    mrid = w.model_run_id
    if mrid is None or w.modelRunId is not None or mrid.isspace():
        mrid = model_run_id(w.modelRunId, w.model_run_id)
    metrics = w.metrics
    if metrics is None:
        raise EventValidationError("metrics", "is required (a non-empty list of metrics)")
    if len(metrics) == 1:
        return MetricEvent(mrid, [metric_row(metrics[0], mrid, 0)])
    rows: list[MetricRow] = []
    append = rows.append
    for i in range(len(metrics)):
        append(metric_row(metrics[i], mrid, i))
    return MetricEvent(mrid, rows)


# -------------------------------------------------------------------------------- labels

_SELECTORS = ("label_ids", "project_id", "data_row_ids", "global_keys")
_CAMEL_SELECTORS = ("labelIds", "projectId", "dataRowIds", "globalKeys")
_ALL_SELECTORS = _SELECTORS + _CAMEL_SELECTORS


def label_event(w: LabelEventWire) -> LabelEvent:
    mrid = w.model_run_id
    if mrid is None or w.modelRunId is not None or mrid.isspace():
        mrid = model_run_id(w.modelRunId, w.model_run_id)
    given = (
        w.label_ids,
        w.project_id,
        w.data_row_ids,
        w.global_keys,
        w.labelIds,
        w.projectId,
        w.dataRowIds,
        w.globalKeys,
    )
    if given.count(None) != 7:
        chosen: list[str] = []
        for k in range(4):
            if given[k + 4] is not None:
                if given[k] is not None:
                    raise _twice("", _CAMEL_SELECTORS[k], _SELECTORS[k])
                chosen.append(_CAMEL_SELECTORS[k])
            elif given[k] is not None:
                chosen.append(_SELECTORS[k])
        raise EventValidationError(
            "label_ids" if not chosen else chosen[1],
            "a label event needs exactly one of label_ids, project_id, data_row_ids, global_keys; "
            f"got {', '.join(chosen) or 'none'}",
        )
    i = 0
    while given[i] is None:
        i += 1
    value: Any = given[i]
    which = i & 3
    if which == 1:
        if value.isspace():
            raise _blank(_ALL_SELECTORS[i])
        return LabelEvent(mrid, None, value)
    if any(map(_isspace, value)):
        for j, s in enumerate(value):
            if s.isspace():
                raise _blank(f"{_ALL_SELECTORS[i]}[{j}]")
    if which == 0:
        return LabelEvent(mrid, value)
    if which == 2:
        return LabelEvent(mrid, None, None, value)
    return LabelEvent(mrid, None, None, None, value)
