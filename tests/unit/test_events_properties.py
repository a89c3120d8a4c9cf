"""Property tests: valid events survive serialize → parse, and no input escapes EventValidationError."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import EventValidationError
from service.events import (
    RESERVED_METRIC_NAMES,
    parse_event,
    parse_metric_row,
    parse_ndjson_row,
    parse_prediction_row,
)

MAX = 1_048_576
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ident = st.text(min_size=1, max_size=12).filter(lambda s: s.strip() != "")
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
unit_float = st.floats(min_value=0.0, max_value=1.0)
count = st.integers(min_value=0, max_value=10_000_000_000)
data_row = st.one_of(st.builds(lambda v: {"id": v}, ident), st.builds(lambda v: {"globalKey": v}, ident))
custom_metrics = st.lists(st.fixed_dictionaries({"name": st.text(max_size=8), "value": finite}), max_size=3)


def _opt(d: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    if value is not None:
        d[key] = value
    return d


@st.composite
def object_row(draw: st.DrawFn) -> dict[str, Any]:
    row: dict[str, Any] = {"dataRow": draw(data_row), "name": draw(ident)}
    row["bbox"] = draw(st.fixed_dictionaries({k: finite for k in ("top", "left", "height", "width")}))
    _opt(row, "confidence", draw(st.none() | unit_float))
    _opt(row, "customMetrics", draw(st.none() | custom_metrics))
    _opt(row, "uuid", draw(st.none() | st.uuids().map(str)))
    _opt(row, "extraField", draw(st.none() | st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3)))
    return row


@st.composite
def answer(draw: st.DrawFn) -> dict[str, Any]:
    ans: dict[str, Any] = {"name": draw(ident)}
    _opt(ans, "confidence", draw(st.none() | unit_float))
    _opt(ans, "customMetrics", draw(st.none() | custom_metrics))
    return ans


@st.composite
def classification_row(draw: st.DrawFn) -> dict[str, Any]:
    row: dict[str, Any] = {"dataRow": draw(data_row), "schemaId": draw(ident)}
    kind = draw(st.sampled_from(["radio", "checklist", "text"]))
    if kind == "radio":
        row["answer"] = draw(answer())
    elif kind == "checklist":
        row["answer"] = draw(st.lists(answer(), min_size=1, max_size=3))
    else:
        row["answer"] = draw(st.text(max_size=10))
        _opt(row, "customMetrics", draw(st.none() | custom_metrics))
    return row


def confidence_keyed(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(unit_float.map(str), values, min_size=2, max_size=15)


@st.composite
def metric_row(draw: st.DrawFn) -> dict[str, Any]:
    camel = draw(st.booleans())
    names = ("dataRow", "metricName", "featureName", "subclassName", "metricValue")
    if not camel:
        names = ("data_row", "metric_name", "feature_name", "subclass_name", "value")
    row: dict[str, Any] = {names[0]: draw(data_row)}
    if draw(st.booleans()):
        row[names[4]] = draw(st.lists(count, min_size=4, max_size=4) | confidence_keyed(st.tuples(*[count] * 4)))
        row[names[1]] = draw(ident)
        _opt(row, "aggregation", draw(st.none() | st.just("CONFUSION_MATRIX")))
    else:
        row[names[4]] = draw(finite | confidence_keyed(finite))
        name = draw(st.none() | ident.filter(lambda s: s.lower().strip() not in RESERVED_METRIC_NAMES))
        _opt(row, names[1], name)
        aggs = st.sampled_from(["ARITHMETIC_MEAN", "GEOMETRIC_MEAN", "HARMONIC_MEAN", "SUM"])
        _opt(row, "aggregation", draw(st.none() | aggs))
    if draw(st.booleans()):
        row[names[2]] = draw(ident)
        _opt(row, names[3], draw(st.none() | ident))
    return row


mrid_key = st.sampled_from(["model_run_id", "modelRunId"])
prediction_event = st.builds(
    lambda k, m, rows: {k: m, "predictions": rows},
    mrid_key,
    ident,
    st.lists(object_row() | classification_row(), min_size=1, max_size=4),
)
metric_event = st.builds(
    lambda k, m, rows: {k: m, "metrics": rows}, mrid_key, ident, st.lists(metric_row(), min_size=1)
)
label_event = st.builds(
    lambda k, m, sel: {k: m, **sel},
    mrid_key,
    ident,
    st.one_of(
        st.builds(lambda v: {"label_ids": v}, st.lists(ident, min_size=1, max_size=3)),
        st.builds(lambda v: {"projectId": v}, ident),
        st.builds(lambda v: {"data_row_ids": v}, st.lists(ident, min_size=1, max_size=3)),
        st.builds(lambda v: {"globalKeys": v}, st.lists(ident, min_size=1, max_size=3)),
    ),
)


@SETTINGS
@given(
    st.one_of(
        prediction_event.map(lambda e: ("prediction", e)),
        metric_event.map(lambda e: ("metric", e)),
        label_event.map(lambda e: ("label", e)),
    )
)
def test_valid_events_round_trip(case: tuple[str, dict[str, Any]]) -> None:
    kind, obj = case
    first = parse_event(kind, orjson.dumps(obj), max_bytes=MAX)  # type: ignore[arg-type]
    wire = first.to_json()
    second = parse_event(kind, wire, max_bytes=MAX)  # type: ignore[arg-type]
    assert second == first
    assert second.to_json() == wire
    # and the uuids a replay of the original message gets are the same
    assert parse_event(kind, orjson.dumps(obj), max_bytes=MAX) == first  # type: ignore[arg-type]


@SETTINGS
@given(object_row())
def test_prediction_row_fields_pass_through(row: dict[str, Any]) -> None:
    out = parse_prediction_row(row, model_run_id="m").to_ndjson()
    for key, value in row.items():
        if key == "customMetrics":
            assert out[key] == [{"name": c["name"], "value": float(c["value"])} for c in value]
        else:
            assert out[key] == value


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | finite | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=25,
)
keyish = st.sampled_from(
    [
        "model_run_id",
        "modelRunId",
        "predictions",
        "prediction",
        "metrics",
        "label_ids",
        "projectId",
        "global_keys",
        "dataRow",
        "data_row",
        "id",
        "globalKey",
        "name",
        "schemaId",
        "answer",
        "customMetrics",
        "mask",
        "confidence",
        "uuid",
        "metricValue",
        "value",
        "metricName",
        "aggregation",
        "classifications",
        "featureName",
        "SUM",
        "CONFUSION_MATRIX",
        "0.5",
        "1",
    ]
)
# JSON biased towards our field names, so the fuzzing reaches the deeper validators.
shaped = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | finite | keyish | st.text(max_size=4),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keyish, children, max_size=6),
    max_leaves=40,
)


def _only_validation_errors(kind: str, raw: bytes | None) -> None:
    with contextlib.suppress(EventValidationError):
        parse_event(kind, raw, max_bytes=MAX)  # type: ignore[arg-type]


@SETTINGS
@given(st.sampled_from(["prediction", "metric", "label"]), json_values | shaped)
def test_arbitrary_json_only_raises_validation_errors(kind: str, value: Any) -> None:
    _only_validation_errors(kind, orjson.dumps(value))
    for wrapped in (
        {"model_run_id": "m", "predictions": [value]},
        {"model_run_id": "m", "prediction": value},
        {"modelRunId": "m", "metrics": [value]},
        {"model_run_id": "m", **value} if isinstance(value, dict) else {"model_run_id": value},
    ):
        _only_validation_errors(kind, orjson.dumps(wrapped))


@SETTINGS
@given(shaped)
def test_arbitrary_row_in_every_event_kind(value: Any) -> None:
    _only_validation_errors("prediction", orjson.dumps({"model_run_id": "m", "predictions": [value]}))
    _only_validation_errors("metric", orjson.dumps({"model_run_id": "m", "metrics": [value]}))


@SETTINGS
@given(st.sampled_from(["prediction", "metric", "label"]), st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_validation_errors(kind: str, raw: bytes) -> None:
    _only_validation_errors(kind, raw)


python_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | keyish | st.text(max_size=4),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keyish, children, max_size=6),
    max_leaves=40,
)


@SETTINGS
@given(st.dictionaries(keyish, python_values, max_size=8))
def test_python_dict_rows_only_raise_validation_errors(row: dict[str, Any]) -> None:
    """The dict entry points also see NaN, inf and huge ints (the local Labelbox API parses with json)."""
    for parse in (parse_prediction_row, parse_metric_row, parse_ndjson_row):
        with contextlib.suppress(EventValidationError):
            parse(row, model_run_id="m")
