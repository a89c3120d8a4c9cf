"""JSON Schemas (draft 2020-12) of the three events, generated from the contract in service.events.wire.

The repository keeps them in ``schemas/`` (``runstream schema --write`` regenerates them; a test fails
when they drift), the query API serves them at ``GET /v1/schemas/{name}`` and ``runstream schema NAME``
prints one. A schema checks structure and types; the rules it cannot express are listed in
``SEMANTIC_ONLY_RULES`` (and in docs/EVENTS.md) and are checked by the service.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from service.events.wire import EVENT_SCHEMA_EXTRA, EVENT_WIRE

SCHEMA_NAMES: tuple[str, ...] = ("prediction-event", "metric-event", "label-event")
_KINDS = {"prediction-event": "prediction", "metric-event": "metric", "label-event": "label"}
_TITLES = {
    "prediction-event": "runstream prediction event",
    "metric-event": "runstream metric event",
    "label-event": "runstream label event",
}
_DESCRIPTIONS = {
    "prediction-event": (
        "One Kafka message on the predictions topic: Labelbox NDJSON prediction rows of one model run. "
        "Fields of a row that are not listed (bbox, polygon, mask, ...) are passed to Labelbox unchanged."
    ),
    "metric-event": (
        "One Kafka message on the metrics topic: ScalarMetric / ConfusionMatrixMetric rows of one model run."
    ),
    "label-event": "One Kafka message on the labels topic: labels or data rows to register in one model run.",
}

# Rules the service checks that these schemas do not express (a payload valid under the schema can
# still be rejected, with a `schema` error naming the field, for one of these).
SEMANTIC_ONLY_RULES: tuple[str, ...] = (
    "a field given in both spellings (camelCase and snake_case) at once",
    "a required field given only as null (model_run_id, a row's dataRow, a metric's value, ...)",
    "a data row reference with both id and globalKey (or neither, but nulls)",
    "a prediction row, answer or nested classification whose name and schemaId are both null",
    "predictions and prediction both given; metrics null",
    "customMetrics on a mask row, or at the top level of a radio/checklist classification",
    f"more than {5000} prediction rows for one data row and name in one event",
    "confidence keys that are not numbers in [0, 1], or two keys for the same confidence",
    "a confusion matrix value with another aggregation than CONFUSION_MATRIX, or without metricName",
    "CONFUSION_MATRIX aggregation on a scalar value, or a confidence-keyed value mixing numbers and matrices",
    "a reserved scalar metric name (true_positive_count, ..., iou), compared case-insensitively",
    "a label event with more than one of label_ids, project_id, data_row_ids, global_keys (or only nulls)",
)


@functools.cache
def event_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of one event, by name (``prediction-event``, ``metric-event``, ``label-event``)."""
    if name not in _KINDS:
        raise KeyError(name)
    kind = _KINDS[name]
    generated = msgspec.json.schema(Annotated[EVENT_WIRE[kind], Meta(extra_json_schema=EVENT_SCHEMA_EXTRA[kind])])
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:runstream:schema:{name}",
        "title": _TITLES[name],
        "description": _DESCRIPTIONS[name],
        **generated,
    }


def schema_json(name: str) -> str:
    """The schema as the checked-in file holds it (stable key order, trailing newline)."""
    return json.dumps(event_schema(name), indent=2, ensure_ascii=False) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    """Write every schema into ``directory`` as ``<name>.json``; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in SCHEMA_NAMES:
        path = directory / f"{name}.json"
        path.write_text(schema_json(name), encoding="utf-8")
        written.append(path)
    return written
