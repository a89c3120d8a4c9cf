"""Labelbox SDK annotation objects (``labelbox.data.annotation_types.Label``) into runstream events.

The mapping from SDK objects to NDJSON rows is the SDK's own: every label goes through
``labelbox.data.serialization.NDJsonConverter.serialize``, the function Labelbox's prediction
import uses, so a ``ScalarMetric``, a ``ConfusionMatrixMetric`` or an ``ObjectAnnotation`` with
``custom_metrics`` becomes exactly the row Labelbox would receive (written as the SDK writes the
import file, ``labelbox.parser.dumps``). Rows with ``metricValue`` are
metric rows, the others prediction rows; both are then validated and batched like any other rows
(``service.producer.build_row_events``).

The SDK is optional (the ``runstream[labelbox]`` extra): it is imported on first use, and a missing
install raises ``MissingExtraError`` naming the extra.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from service.errors import ConfigError, EventValidationError, MessageTooLargeError
from service.producer import DEFAULT_MAX_ROWS_PER_EVENT, RowKind, _check_finite, build_row_events

__all__ = ["EXTRA", "LabelRows", "MissingExtraError", "build_label_row_events", "labels_to_rows"]

EXTRA = "runstream[labelbox]"

_ROW_INDEX = re.compile(r"^(predictions|metrics)\[(\d+)\]")


class MissingExtraError(ConfigError):
    """An optional feature's packages are not installed; the message names the extra to install."""


@dataclass
class LabelRows:
    """The NDJSON rows of a list of labels, and for each row the label it came from."""

    predictions: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    # (index of the label in the caller's list, index of the row among that label's rows of its kind)
    prediction_origin: list[tuple[int, int]] = field(default_factory=list)
    metric_origin: list[tuple[int, int]] = field(default_factory=list)


def _sdk() -> tuple[Any, Any, Any]:
    """(Label class, NDJsonConverter, the SDK's NDJSON writer) from the installed SDK, or MissingExtraError."""
    try:
        types = importlib.import_module("labelbox.data.annotation_types")
        ndjson = importlib.import_module("labelbox.data.serialization.ndjson.converter")
        parser = importlib.import_module("labelbox.parser")
    except ImportError as exc:
        raise MissingExtraError(
            "emit_labels needs the Labelbox SDK with its annotation types; install the extra: "
            f"pip install '{EXTRA}' (import failed: {exc})"
        ) from None
    return types.Label, ndjson.NDJsonConverter, parser


def labels_to_rows(labels: Iterable[Any]) -> LabelRows:
    """Serialize each label with the SDK's ``NDJsonConverter`` and split the rows by kind.

    A non-``Label`` item, or a label the SDK cannot serialize, raises ``EventValidationError``
    naming ``labels[i]``.
    """
    label_cls, converter, parser = _sdk()
    out = LabelRows()
    for li, label in enumerate(labels):
        if not isinstance(label, label_cls):
            raise EventValidationError(
                f"labels[{li}]",
                f"must be a labelbox.data.annotation_types.Label, got {type(label).__name__}",
            )
        try:
            rows = list(converter.serialize([label]))
        except Exception as exc:  # the SDK raises ValueError, pydantic errors, its own exceptions
            raise EventValidationError(
                f"labels[{li}]", f"the Labelbox SDK could not serialize this label: {exc}"
            ) from None
        n_pred = n_metric = 0
        for row in rows:
            kind = "metrics" if "metricValue" in row else "predictions"
            _check_finite(row, f"labels[{li}].{kind}[{n_metric if kind == 'metrics' else n_pred}]")
            # The row as the SDK writes it into the import file (``labelbox.parser.dumps``, i.e.
            # ``json.dumps``): confidence keys, floats in the model, become the strings Labelbox reads.
            row = orjson.loads(parser.dumps([row]))
            if kind == "metrics":
                out.metrics.append(row)
                out.metric_origin.append((li, n_metric))
                n_metric += 1
            else:
                out.predictions.append(row)
                out.prediction_origin.append((li, n_pred))
                n_pred += 1
    return out


def _relabel(exc: EventValidationError, origin: list[tuple[int, int]]) -> EventValidationError:
    """``predictions[17].customMetrics[0].value`` -> ``labels[3].predictions[2].customMetrics[0].value``."""
    m = _ROW_INDEX.match(exc.field)
    if m is None or type(exc) is MessageTooLargeError or int(m.group(2)) >= len(origin):
        return exc
    li, j = origin[int(m.group(2))]
    return type(exc)(f"labels[{li}].{m.group(1)}[{j}]{exc.field[m.end() :]}", exc.reason)


def build_label_row_events(
    model_run_id: str,
    labels: Iterable[Any],
    *,
    max_rows: int = DEFAULT_MAX_ROWS_PER_EVENT,
    max_bytes: int = 1_048_576,
) -> dict[RowKind, list[bytes]]:
    """Validated prediction and metric events for ``labels``; nothing is returned if any row is bad.

    Error field paths name the label and the row of it: ``labels[3].metrics[0].metricValue``.
    """
    rows = labels_to_rows(labels)
    out: dict[RowKind, list[bytes]] = {}
    parts: tuple[tuple[RowKind, list[dict[str, Any]], list[tuple[int, int]]], ...] = (
        ("prediction", rows.predictions, rows.prediction_origin),
        ("metric", rows.metrics, rows.metric_origin),
    )
    for kind, items, origin in parts:
        try:
            out[kind] = build_row_events(kind, model_run_id, items, max_rows=max_rows, max_bytes=max_bytes)
        except EventValidationError as exc:
            raise _relabel(exc, origin) from None
    return out
