"""The entry points: one message (``parse_event``) or one row given as a Python dict.

Every path is the same: decode, validate the structure with the compiled validator (service.events.wire),
then the semantic checks (service.events.checks) that build the typed result.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from service.errors import EventValidationError
from service.events import checks, decode
from service.events.constants import EventKind
from service.events.models import LabelEvent, MetricEvent, MetricRow, PredictionEvent, PredictionRow
from service.events.wire import (
    LABEL_EVENT_DECODER,
    METRIC_EVENT_DECODER,
    MetricRowWire,
    PredictionEventWire,
    PredictionRowWire,
)

_loads = orjson.loads
_convert = msgspec.convert
_decode_metric = METRIC_EVENT_DECODER.decode
_decode_label = LABEL_EVENT_DECODER.decode
_metric_event = checks.metric_event
_prediction_event = checks.prediction_event
_label_event = checks.label_event
_DECODE_ERRORS = (msgspec.ValidationError, msgspec.DecodeError, orjson.JSONDecodeError, UnicodeDecodeError, TypeError)


def parse_event(kind: EventKind, raw: bytes | None, *, max_bytes: int) -> PredictionEvent | MetricEvent | LabelEvent:
    """Size check, decode and validate one Kafka message value; every failure is an EventValidationError.

    The common case is decoded here directly; whatever fails is decoded again by service.events.decode,
    which names the problem (only rejected messages pay for that).
    """
    try:
        if raw is not None and len(raw) <= max_bytes:
            try:
                if kind == "metric":
                    return _metric_event(_decode_metric(raw))
                if kind == "prediction":
                    doc = _loads(raw)
                    if type(doc) is dict:
                        return _prediction_event(_convert(doc, PredictionEventWire), doc)
                elif kind == "label":
                    return _label_event(_decode_label(raw))
            except _DECODE_ERRORS:
                pass
        if kind == "prediction":
            w, doc = decode.prediction_event(raw, max_bytes)
            return checks.prediction_event(w, doc)
        if kind == "metric":
            return checks.metric_event(decode.metric_event(raw, max_bytes))
        if kind == "label":
            return checks.label_event(decode.label_event(raw, max_bytes))
    except RecursionError:
        raise EventValidationError("", "the event is nested too deeply") from None
    raise EventValidationError("kind", f"unknown event kind {kind!r}; expected prediction, metric or label")


def _model_run_id(model_run_id: str, path: str) -> str:
    try:
        model_run_id.encode()
    except (UnicodeEncodeError, AttributeError) as exc:
        raise EventValidationError(path, f"cannot be serialized as JSON: model_run_id {exc}") from None
    return model_run_id


def parse_prediction_row(row: dict[str, Any], *, model_run_id: str, path: str = "prediction") -> PredictionRow:
    """Validate one Labelbox NDJSON prediction row given as a Python dict (NaN/inf are checked too)."""
    w, doc = decode.python_row(
        row, PredictionRowWire, path, "a Labelbox NDJSON prediction row", non_str_keys=False
    )
    return checks.prediction_row(w, doc, _model_run_id(model_run_id, path), path)


def parse_metric_row(row: dict[str, Any], *, model_run_id: str, path: str = "metric") -> MetricRow:
    """Validate one metric row, SDK snake_case or NDJSON camelCase."""
    w, _ = decode.python_row(
        row, MetricRowWire, path, "a ScalarMetric or ConfusionMatrixMetric", non_str_keys=True
    )
    return checks.metric_row(w, _model_run_id(model_run_id, path), path)


def parse_ndjson_row(row: dict[str, Any], *, model_run_id: str, path: str = "row") -> PredictionRow | MetricRow:
    """One line of a Labelbox NDJSON import: a row with ``metricValue`` is a metric, anything else a prediction."""
    if isinstance(row, dict) and "metricValue" in row:
        return parse_metric_row(row, model_run_id=model_run_id, path=path)
    return parse_prediction_row(row, model_run_id=model_run_id, path=path)
