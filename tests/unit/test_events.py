"""Validation rules of the event contracts (docs/EVENTS.md): one valid and one invalid case each."""

from __future__ import annotations

import math
import uuid
from typing import Any

import orjson
import pytest

from service.errors import EventValidationError, MalformedJsonError, MessageTooLargeError
from service.events import (
    METRIC_UUID_NAMESPACE,
    PREDICTION_UUID_NAMESPACE,
    ConfusionMatrixMetricRow,
    CustomMetricLeaf,
    LabelEvent,
    MetricEvent,
    PredictionEvent,
    PredictionRow,
    ScalarMetricRow,
    parse_event,
    parse_metric_row,
    parse_ndjson_row,
    parse_prediction_row,
)

MAX = 1_048_576
MR = "mr-1"


def enc(obj: Any) -> bytes:
    return orjson.dumps(obj)


def pred_event(*rows: dict[str, Any], **extra: Any) -> bytes:
    return enc({"model_run_id": MR, "predictions": list(rows), **extra})


def metric_event(*rows: dict[str, Any]) -> bytes:
    return enc({"model_run_id": MR, "metrics": list(rows)})


def bbox(**over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "dataRow": {"globalKey": "gk-1"},
        "name": "cat",
        "bbox": {"top": 1, "left": 2, "height": 3, "width": 4},
    }
    row.update(over)
    return row


def scalar(**over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"data_row": {"id": "dr-1"}, "metric_name": "acc", "value": 0.5}
    row.update(over)
    return row


def cm(**over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"dataRow": {"id": "dr-1"}, "metricName": "50pct_iou", "metricValue": [1, 2, 3, 4]}
    row.update(over)
    return row


def reject(kind: str, raw: bytes, field: str, *words: str) -> EventValidationError:
    with pytest.raises(EventValidationError) as info:
        parse_event(kind, raw, max_bytes=MAX)  # type: ignore[arg-type]
    err = info.value
    assert err.field == field, str(err)
    assert str(err).startswith(f"{field}: ") if field else True
    for w in words:
        assert w in err.reason, err.reason
    return err


def ok_pred(*rows: dict[str, Any]) -> PredictionEvent:
    ev = parse_event("prediction", pred_event(*rows), max_bytes=MAX)
    assert isinstance(ev, PredictionEvent)
    return ev


def ok_metric(*rows: dict[str, Any]) -> MetricEvent:
    ev = parse_event("metric", metric_event(*rows), max_bytes=MAX)
    assert isinstance(ev, MetricEvent)
    return ev


# ---------------------------------------------------------------- raw message ------------------------


def test_too_large_is_checked_before_parsing() -> None:
    raw = b"not json at all" * 10
    with pytest.raises(MessageTooLargeError) as info:
        parse_event("prediction", raw, max_bytes=10)
    assert info.value.size == len(raw) and info.value.limit == 10
    assert info.value.error_class == "too_large"


def test_exactly_max_bytes_is_accepted() -> None:
    raw = pred_event(bbox())
    assert isinstance(parse_event("prediction", raw, max_bytes=len(raw)), PredictionEvent)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (None, "tombstone"),
        (b"\xff\xfe{}", "UTF-8"),
        (b'{"model_run_id": "\xc3"}', "UTF-8"),
        (b"{", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"NaN", "not valid JSON"),
        (b"[1, 2]", "JSON object, got an array"),
        (b'"x"', "JSON object, got a string"),
        (b"null", "JSON object, got null"),
        (b'{"a": 1e400}', "not valid JSON"),
    ],
)
def test_malformed_json(raw: bytes | None, words: str) -> None:
    with pytest.raises(MalformedJsonError) as info:
        parse_event("metric", raw, max_bytes=MAX)
    assert words in info.value.reason
    assert info.value.error_class == "json"


def test_unknown_kind_is_a_validation_error() -> None:
    with pytest.raises(EventValidationError, match="unknown event kind"):
        parse_event("nope", b"{}", max_bytes=MAX)  # type: ignore[arg-type]


# ---------------------------------------------------------------- envelopes ---------------------------


@pytest.mark.parametrize("key", ["model_run_id", "modelRunId"])
def test_model_run_id_both_spellings(key: str) -> None:
    ev = parse_event("prediction", enc({key: MR, "predictions": [bbox()]}), max_bytes=MAX)
    assert ev.model_run_id == MR


@pytest.mark.parametrize(
    ("obj", "field", "words"),
    [
        ({"predictions": [bbox()]}, "model_run_id", "required"),
        ({"model_run_id": None, "predictions": [bbox()]}, "model_run_id", "required"),
        ({"model_run_id": "", "predictions": [bbox()]}, "model_run_id", "non-empty string"),
        ({"modelRunId": 7, "predictions": [bbox()]}, "modelRunId", "non-empty string, got a number"),
        ({"model_run_id": MR, "modelRunId": MR, "predictions": [bbox()]}, "modelRunId", "given twice"),
    ],
)
def test_model_run_id_rejections(obj: dict[str, Any], field: str, words: str) -> None:
    reject("prediction", enc(obj), field, words)


def test_single_prediction_form() -> None:
    ev = parse_event("prediction", enc({"model_run_id": MR, "prediction": bbox()}), max_bytes=MAX)
    assert isinstance(ev, PredictionEvent) and len(ev.predictions) == 1


@pytest.mark.parametrize(
    ("obj", "field", "words"),
    [
        ({"model_run_id": MR}, "predictions", "required"),
        ({"model_run_id": MR, "predictions": []}, "predictions", "must not be empty"),
        ({"model_run_id": MR, "predictions": {}}, "predictions", "must be a list"),
        ({"model_run_id": MR, "predictions": [bbox()], "prediction": bbox()}, "predictions", "not both"),
        ({"model_run_id": MR, "prediction": [bbox()]}, "prediction", "must be an object"),
        ({"model_run_id": MR, "predictions": [1]}, "predictions[0]", "must be an object"),
    ],
)
def test_prediction_envelope_rejections(obj: dict[str, Any], field: str, words: str) -> None:
    reject("prediction", enc(obj), field, words)


def test_unknown_envelope_key_is_named_with_a_suggestion() -> None:
    err = reject("prediction", pred_event(bbox(), predictons=[]), "predictons", "unknown", "did you mean predictions")
    assert "allowed" in err.reason


def test_unknown_metric_envelope_keys_all_named() -> None:
    raw = enc({"model_run_id": MR, "metrics": [scalar()], "zz": 1, "aa": 2})
    err = reject("metric", raw, "aa", "unknown", "zz")
    assert "also unknown: zz" in err.reason


@pytest.mark.parametrize(
    ("obj", "field", "words"),
    [
        ({"model_run_id": MR}, "metrics", "required"),
        ({"model_run_id": MR, "metrics": []}, "metrics", "must not be empty"),
        ({"model_run_id": MR, "metrics": "x"}, "metrics", "must be a list"),
        ({"model_run_id": MR, "metrics": [None]}, "metrics[0]", "must be an object"),
    ],
)
def test_metric_envelope_rejections(obj: dict[str, Any], field: str, words: str) -> None:
    reject("metric", enc(obj), field, words)


# ---------------------------------------------------------------- label events ------------------------


@pytest.mark.parametrize(
    ("key", "value", "attr"),
    [
        ("label_ids", ["l1", "l2"], "label_ids"),
        ("labelIds", ["l1"], "label_ids"),
        ("project_id", "p1", "project_id"),
        ("projectId", "p1", "project_id"),
        ("data_row_ids", ["d1"], "data_row_ids"),
        ("dataRowIds", ["d1"], "data_row_ids"),
        ("global_keys", ["g1"], "global_keys"),
        ("globalKeys", ["g1"], "global_keys"),
    ],
)
def test_label_event_each_selector(key: str, value: Any, attr: str) -> None:
    ev = parse_event("label", enc({"modelRunId": MR, key: value}), max_bytes=MAX)
    assert isinstance(ev, LabelEvent)
    assert getattr(ev, attr) == value
    others = {"label_ids", "project_id", "data_row_ids", "global_keys"} - {attr}
    assert all(getattr(ev, o) is None for o in others)


@pytest.mark.parametrize(
    ("obj", "field", "words"),
    [
        ({"model_run_id": MR}, "label_ids", "exactly one"),
        ({"model_run_id": MR, "label_ids": ["a"], "project_id": "p"}, "project_id", "exactly one"),
        ({"model_run_id": MR, "global_keys": ["a"], "dataRowIds": ["d"]}, "global_keys", "exactly one"),
        ({"model_run_id": MR, "label_ids": []}, "label_ids", "must not be empty"),
        ({"model_run_id": MR, "label_ids": "l1"}, "label_ids", "must be a list"),
        ({"model_run_id": MR, "label_ids": ["ok", ""]}, "label_ids[1]", "non-empty string"),
        ({"model_run_id": MR, "globalKeys": [3]}, "globalKeys[0]", "non-empty string"),
        ({"model_run_id": MR, "project_id": ""}, "project_id", "non-empty string"),
        ({"model_run_id": MR, "projectId": ["p"]}, "projectId", "non-empty string"),
        ({"model_run_id": MR, "label_id": ["l"]}, "label_id", "did you mean label_ids"),
        ({"model_run_id": MR, "labelIds": ["a"], "label_ids": ["b"]}, "labelIds", "given twice"),
    ],
)
def test_label_event_rejections(obj: dict[str, Any], field: str, words: str) -> None:
    reject("label", enc(obj), field, words)


def test_label_event_null_selector_counts_as_absent() -> None:
    ev = parse_event("label", enc({"model_run_id": MR, "label_ids": None, "project_id": "p"}), max_bytes=MAX)
    assert isinstance(ev, LabelEvent) and ev.project_id == "p" and ev.label_ids is None


# ---------------------------------------------------------------- dataRow -----------------------------


@pytest.mark.parametrize(
    ("data_row", "key"),
    [({"id": "d1"}, "id:d1"), ({"globalKey": "g1"}, "gk:g1"), ({"global_key": "g1"}, "gk:g1")],
)
def test_data_row_valid(data_row: dict[str, str], key: str) -> None:
    row = ok_pred(bbox(dataRow=data_row)).predictions[0]
    assert row.data_row.key() == key
    assert row.to_ndjson()["dataRow"] == ({"id": "d1"} if "id" in data_row else {"globalKey": "g1"})


@pytest.mark.parametrize(
    ("data_row", "field", "words"),
    [
        ({"id": "d1", "globalKey": "g1"}, "predictions[0].dataRow", "exactly one of id or globalKey, got both"),
        ({}, "predictions[0].dataRow", "got neither"),
        ({"id": None, "globalKey": None}, "predictions[0].dataRow", "got neither"),
        ({"id": ""}, "predictions[0].dataRow.id", "non-empty string"),
        ({"globalKey": 5}, "predictions[0].dataRow.globalKey", "non-empty string"),
        ({"id": "d", "externalId": "x"}, "predictions[0].dataRow.externalId", "unknown"),
        ("d1", "predictions[0].dataRow", "must be an object"),
        ({"globalKey": "a", "global_key": "b"}, "predictions[0].dataRow.globalKey", "given twice"),
    ],
)
def test_data_row_invalid(data_row: Any, field: str, words: str) -> None:
    reject("prediction", pred_event(bbox(dataRow=data_row)), field, words)


def test_data_row_required() -> None:
    row = bbox()
    del row["dataRow"]
    reject("prediction", pred_event(bbox(), row), "predictions[1].dataRow", "required")


def test_snake_case_data_row_in_prediction_row_is_normalized() -> None:
    row = bbox()
    row["data_row"] = row.pop("dataRow")
    out = ok_pred(row).predictions[0].to_ndjson()
    assert out["dataRow"] == {"globalKey": "gk-1"} and "data_row" not in out


def test_prediction_row_both_spellings_rejected() -> None:
    reject("prediction", pred_event(bbox(data_row={"id": "x"})), "predictions[0].dataRow", "given twice")


# ---------------------------------------------------------------- prediction rows ---------------------


def test_name_or_schema_id_required() -> None:
    assert ok_pred(bbox(name=None, schemaId="sch-1")).predictions[0].schema_id == "sch-1"
    assert ok_pred(bbox(schema_id="sch-1")).predictions[0].to_ndjson()["schemaId"] == "sch-1"
    row = bbox()
    del row["name"]
    reject("prediction", pred_event(row), "predictions[0]", "name or schemaId")
    reject("prediction", pred_event(bbox(name="")), "predictions[0].name", "non-empty")
    reject("prediction", pred_event(bbox(schemaId=3)), "predictions[0].schemaId", "non-empty string")


def test_unknown_row_fields_pass_through() -> None:
    row = bbox(polygon=[{"x": 1, "y": 2}], classifications=[], someFutureField={"a": [1, None]})
    out = ok_pred(row).predictions[0].to_ndjson()
    assert out["polygon"] == [{"x": 1, "y": 2}]
    assert out["someFutureField"] == {"a": [1, None]}
    assert out["bbox"] == row["bbox"]


def test_confidence() -> None:
    assert ok_pred(bbox(confidence=1)).predictions[0].confidence == 1.0
    reject("prediction", pred_event(bbox(confidence=1.5)), "predictions[0].confidence", "between 0 and 1")
    reject("prediction", pred_event(bbox(confidence="0.5")), "predictions[0].confidence", "must be a number")
    reject("prediction", pred_event(bbox(confidence=True)), "predictions[0].confidence", "boolean")


U1 = "0b9e4a0c-3f5e-4d3a-9c57-7e1c2a9b1f10"
U2 = "6F1D4C62-9A57-4F4E-9D0B-7C115B0C3A4E"


def test_uuid_given_is_kept_and_must_be_a_uuid_string() -> None:
    assert ok_pred(bbox(uuid=U1)).predictions[0].uuid == U1
    assert ok_pred(bbox(uuid=U2)).predictions[0].to_ndjson()["uuid"] == U2, "kept as written"
    reject("prediction", pred_event(bbox(uuid=5)), "predictions[0].uuid", "must be a UUID string", "got a number")
    reject("prediction", pred_event(bbox(uuid="")), "predictions[0].uuid", "must be a UUID string", "got ''")
    reject("prediction", pred_event(bbox(uuid="u-1")), "predictions[0].uuid", "must be a UUID string", "'u-1'")
    reject("prediction", pred_event(bbox(uuid=U1 + "0")), "predictions[0].uuid", "UUID string")
    reject("prediction", pred_event(bbox(uuid=U1.replace("-", ""))), "predictions[0].uuid", "8-4-4-4-12")


def test_deterministic_prediction_uuid() -> None:
    a = ok_pred(bbox()).predictions[0]
    b = ok_pred(dict(reversed(list(bbox().items())))).predictions[0]
    assert a.uuid == b.uuid, "key order must not matter"
    assert isinstance(a.uuid, str) and len(a.uuid) == 36 and a.uuid[14] == "5"
    assert a.to_ndjson()["uuid"] == a.uuid
    other_run = parse_prediction_row(bbox(), model_run_id="mr-2")
    assert other_run.uuid != a.uuid
    moved = ok_pred(bbox(bbox={"top": 9, "left": 2, "height": 3, "width": 4})).predictions[0]
    assert moved.uuid != a.uuid
    snake = bbox()
    snake["data_row"] = snake.pop("dataRow")
    assert ok_pred(snake).predictions[0].uuid == a.uuid, "spelling must not matter"


def test_per_data_row_and_name_limit() -> None:
    rows = [bbox() for _ in range(5000)]
    assert len(ok_pred(*rows).predictions) == 5000
    # rows with another name, or on another data row, do not count towards the limit
    assert len(ok_pred(*rows, bbox(name="dog"), bbox(dataRow={"id": "x"})).predictions) == 5002
    reject("prediction", pred_event(*rows, bbox()), "predictions[5000]", "more than 5000", "'cat'")


# ---------------------------------------------------------------- customMetrics -----------------------


def test_custom_metrics_top_level_on_object() -> None:
    row = ok_pred(bbox(customMetrics=[{"name": "iou", "value": 1}, {"name": "w", "value": 0.25}])).predictions[0]
    assert row.to_ndjson()["customMetrics"] == [{"name": "iou", "value": 1.0}, {"name": "w", "value": 0.25}]
    assert isinstance(row.to_ndjson()["customMetrics"][0]["value"], float)
    assert row.custom_metric_leaves() == [
        CustomMetricLeaf("cat", None, "iou", 1.0),
        CustomMetricLeaf("cat", None, "w", 0.25),
    ]


def test_custom_metrics_snake_case_alias() -> None:
    row = ok_pred(bbox(custom_metrics=[{"name": "m", "value": 2}])).predictions[0]
    assert row.to_ndjson()["customMetrics"] == [{"name": "m", "value": 2.0}]


def test_custom_metrics_on_free_text() -> None:
    row = {"dataRow": {"id": "d"}, "name": "caption", "answer": "a cat", "customMetrics": [{"name": "m", "value": 3}]}
    assert ok_pred(row).predictions[0].custom_metric_leaves() == [CustomMetricLeaf("caption", None, "m", 3.0)]


def test_custom_metrics_inside_radio_and_checklist_answers() -> None:
    radio = {
        "dataRow": {"id": "d"},
        "name": "q",
        "answer": {"name": "yes", "customMetrics": [{"name": "m", "value": 1}]},
    }
    checklist = {
        "dataRow": {"id": "d"},
        "name": "tags",
        "answer": [{"name": "a", "customMetrics": [{"name": "m", "value": 1}]}, {"schemaId": "s-b"}],
    }
    ev = ok_pred(radio, checklist)
    assert ev.predictions[0].custom_metric_leaves() == [CustomMetricLeaf("q", "yes", "m", 1.0)]
    assert ev.predictions[1].custom_metric_leaves() == [CustomMetricLeaf("tags", "a", "m", 1.0)]


def test_custom_metrics_in_nested_classification() -> None:
    row = bbox(
        classifications=[{"name": "color", "answer": {"name": "black", "customMetrics": [{"name": "m", "value": 1}]}}]
    )
    assert ok_pred(row).predictions[0].custom_metric_leaves() == [CustomMetricLeaf("cat", "black", "m", 1.0)]
    bad = bbox(classifications=[{"name": "color", "answer": {"name": "b", "customMetrics": [{"name": "m"}]}}])
    reject("prediction", pred_event(bad), "predictions[0].classifications[0].answer.customMetrics[0].value", "required")


def test_custom_metrics_top_level_on_radio_rejected() -> None:
    row = {"dataRow": {"id": "d"}, "name": "q", "answer": {"name": "y"}, "customMetrics": [{"name": "m", "value": 1}]}
    reject("prediction", pred_event(row), "predictions[0].customMetrics", "inside each answer")


def test_custom_metrics_on_mask_rejected() -> None:
    mask = {"dataRow": {"id": "d"}, "name": "seg", "mask": {"png": "iVBOR"}}
    row = ok_pred(mask).predictions[0]
    assert row.is_mask and not ok_pred(bbox()).predictions[0].is_mask
    reject(
        "prediction",
        pred_event({**mask, "customMetrics": [{"name": "m", "value": 1}]}),
        "predictions[0].customMetrics",
        "raster segmentation (mask)",
    )


@pytest.mark.parametrize(
    ("cms", "field", "words"),
    [
        ({"name": "m", "value": 1}, "predictions[0].customMetrics", "must be a list"),
        (["m"], "predictions[0].customMetrics[0]", "must be an object"),
        ([{"value": 1}], "predictions[0].customMetrics[0].name", "required"),
        ([{"name": 1, "value": 1}], "predictions[0].customMetrics[0].name", "must be a string"),
        ([{"name": "m"}], "predictions[0].customMetrics[0].value", "required"),
        ([{"name": "m", "value": "0.1"}], "predictions[0].customMetrics[0].value", "must be a number"),
        ([{"name": "m", "value": None}], "predictions[0].customMetrics[0].value", "must be a number"),
        ([{"name": "m", "value": 1, "valu": 2}], "predictions[0].customMetrics[0].valu", "unknown"),
    ],
)
def test_custom_metrics_invalid(cms: Any, field: str, words: str) -> None:
    reject("prediction", pred_event(bbox(customMetrics=cms)), field, words)


@pytest.mark.parametrize(
    ("answer", "field", "words"),
    [
        (5, "predictions[0].answer", "string (free text), an object (radio) or a list"),
        ([], "predictions[0].answer", "at least one"),
        ([{"name": "a"}, "b"], "predictions[0].answer[1]", "must be an object"),
        ({"confidence": 0.5}, "predictions[0].answer", "name or schemaId"),
        ({"name": "a", "confidence": 2}, "predictions[0].answer.confidence", "between 0 and 1"),
    ],
)
def test_answers_invalid(answer: Any, field: str, words: str) -> None:
    reject("prediction", pred_event({"dataRow": {"id": "d"}, "name": "q", "answer": answer}), field, words)


# ---------------------------------------------------------------- non-finite numbers (dict entry points)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_rejected_everywhere(bad: float) -> None:
    with pytest.raises(EventValidationError) as e1:
        parse_prediction_row(bbox(confidence=bad), model_run_id=MR)
    assert e1.value.field == "prediction.confidence" and "finite" in e1.value.reason
    with pytest.raises(EventValidationError) as e2:
        parse_prediction_row(bbox(customMetrics=[{"name": "m", "value": bad}]), model_run_id=MR)
    assert e2.value.field == "prediction.customMetrics[0].value"
    with pytest.raises(EventValidationError) as e3:
        parse_prediction_row(bbox(bbox={"top": bad, "left": 0}), model_run_id=MR)
    assert e3.value.field == "prediction.bbox.top" and "finite" in e3.value.reason
    with pytest.raises(EventValidationError) as e4:
        parse_metric_row(scalar(value=bad), model_run_id=MR)
    assert e4.value.field == "metric.value" and "finite" in e4.value.reason
    with pytest.raises(EventValidationError) as e5:
        parse_metric_row(scalar(value={"0.1": 1.0, "0.2": bad}), model_run_id=MR)
    assert e5.value.field == 'metric.value["0.2"]'
    with pytest.raises(EventValidationError) as e6:
        parse_metric_row(cm(metricValue=[1, 2, bad, 4]), model_run_id=MR)
    assert e6.value.field == "metric.metricValue[2]"


# ---------------------------------------------------------------- scalar metrics ----------------------


@pytest.mark.parametrize("agg", ["ARITHMETIC_MEAN", "GEOMETRIC_MEAN", "HARMONIC_MEAN", "SUM"])
def test_scalar_aggregations(agg: str) -> None:
    m = ok_metric(scalar(aggregation=agg)).metrics[0]
    assert isinstance(m, ScalarMetricRow) and m.aggregation == agg


@pytest.mark.parametrize("given", [{}, {"aggregation": None}])
def test_scalar_aggregation_default(given: dict[str, Any]) -> None:
    m = ok_metric(scalar(**given)).metrics[0]
    assert m.aggregation == "ARITHMETIC_MEAN"
    assert m.to_ndjson()["aggregation"] == "ARITHMETIC_MEAN"


@pytest.mark.parametrize(
    ("agg", "words"),
    [("MEDIAN", "must be one of"), ("sum", "must be one of"), (1, "must be a string")],
)
def test_scalar_aggregation_invalid(agg: Any, words: str) -> None:
    reject("metric", metric_event(scalar(aggregation=agg)), "metrics[0].aggregation", words)


def test_scalar_with_confusion_matrix_aggregation_rejected() -> None:
    reject("metric", metric_event(scalar(aggregation="CONFUSION_MATRIX")), "metrics[0].value", "[TP, FP, TN, FN]")


@pytest.mark.parametrize(
    "name",
    [
        "true_positive_count",
        "false_positive_count",
        "true_negative_count",
        "false_negative_count",
        "precision",
        "Recall",
        " F1",
        " IoU ",
    ],
)
def test_reserved_scalar_names(name: str) -> None:
    err = reject("metric", metric_event(scalar(metric_name=name)), "metrics[0].metric_name", "reserved")
    assert repr(name.lower().strip()) in err.reason


def test_non_reserved_and_missing_scalar_names() -> None:
    assert ok_metric(scalar(metric_name="custom_iou")).metrics[0].metric_name == "custom_iou"
    row = scalar()
    del row["metric_name"]
    m = ok_metric(row).metrics[0]
    assert m.metric_name is None and "metricName" not in m.to_ndjson()
    assert m.upsert_key() == ("id:dr-1", "", None, None)
    reject("metric", metric_event(scalar(metric_name=5)), "metrics[0].metric_name", "must be a string")


def test_reserved_names_allowed_for_confusion_matrix() -> None:
    assert ok_metric(cm(metricName="iou")).metrics[0].metric_name == "iou"


@pytest.mark.parametrize(
    ("value", "words"),
    [("0.5", "must be a number"), (True, "boolean"), ([0.5], "4 integers")],
)
def test_scalar_value_invalid(value: Any, words: str) -> None:
    reject("metric", metric_event(scalar(value=value)), "metrics[0].value", words)


def test_scalar_value_required() -> None:
    row = scalar()
    del row["value"]
    reject("metric", metric_event(row), "metrics[0].value", "required")


def test_scalar_value_serialized_as_float() -> None:
    m = ok_metric(scalar(value=3)).metrics[0]
    assert m.value == 3.0 and isinstance(m.to_ndjson()["metricValue"], float)
    assert b'"metricValue":3.0' in orjson.dumps(m.to_ndjson())


# ---------------------------------------------------------------- confidence-keyed values -------------


def test_confidence_keyed_scalar() -> None:
    m = ok_metric(scalar(value={"0.1": 0.2, "0.50": 1, "1": 0.4})).metrics[0]
    assert m.value == {0.1: 0.2, 0.5: 1.0, 1.0: 0.4}
    assert m.to_ndjson()["metricValue"] == {"0.1": 0.2, "0.5": 1.0, "1.0": 0.4}


def test_confidence_keyed_from_python_dict_with_float_keys() -> None:
    m = parse_metric_row(scalar(value={0.1: 1.0, 0.9: 2.0}), model_run_id=MR)
    assert m.to_ndjson()["metricValue"] == {"0.1": 1.0, "0.9": 2.0}


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"0.1": 1.0}, "between 2 and 15 keys, got 1"),
        ({str(i / 100): 1.0 for i in range(16)}, "got 16"),
        ({"1.5": 1.0, "0.1": 1.0}, "in [0, 1]"),
        ({"-0.1": 1.0, "0.1": 1.0}, "in [0, 1]"),
        ({"high": 1.0, "0.1": 1.0}, "in [0, 1]"),
        ({"nan": 1.0, "0.1": 1.0}, "in [0, 1]"),
        ({"0.5": 1.0, "0.50": 1.0}, "repeats"),
    ],
)
def test_confidence_keyed_invalid(value: dict[str, Any], words: str) -> None:
    reject("metric", metric_event(scalar(value=value)), "metrics[0].value", words)


def test_confidence_keyed_limits_inclusive() -> None:
    assert len(ok_metric(scalar(value={str(i / 100): 1.0 for i in range(15)})).metrics[0].value) == 15  # type: ignore[arg-type]
    assert ok_metric(scalar(value={"0": 1.0, "1": 1.0})).metrics[0].value == {0.0: 1.0, 1.0: 1.0}


def test_confidence_keyed_value_entry_invalid() -> None:
    reject("metric", metric_event(scalar(value={"0.1": "x", "0.2": 1})), 'metrics[0].value["0.1"]', "number")


# ---------------------------------------------------------------- confusion matrix --------------------


def test_confusion_matrix_valid() -> None:
    m = ok_metric(cm(metricValue=[1.0, 0, 10_000_000_000, 3])).metrics[0]
    assert isinstance(m, ConfusionMatrixMetricRow)
    assert m.value == (1, 0, 10_000_000_000, 3) and m.aggregation == "CONFUSION_MATRIX"
    assert m.to_ndjson()["metricValue"] == [1, 0, 10_000_000_000, 3]
    assert ok_metric(cm(aggregation="CONFUSION_MATRIX")).metrics[0].aggregation == "CONFUSION_MATRIX"


def test_confusion_matrix_confidence_keyed() -> None:
    m = ok_metric(cm(metricValue={"0.1": [1, 0, 1, 0], "0.9": [0, 1, 0, 1]})).metrics[0]
    assert m.to_ndjson()["metricValue"] == {"0.1": [1, 0, 1, 0], "0.9": [0, 1, 0, 1]}


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [
        ([1, 2, 3], "metrics[0].metricValue", "4 integers; got 3 elements"),
        ([1, 2, 3, 4, 5], "metrics[0].metricValue", "got 5 elements"),
        ([1, 2, 3, 1.5], "metrics[0].metricValue[3]", "integer count, got 1.5"),
        ([1, -1, 3, 4], "metrics[0].metricValue[1]", "between 0 and 1e10"),
        ([1, 1e11, 3, 4], "metrics[0].metricValue[1]", "between 0 and 1e10"),
        ([1, True, 3, 4], "metrics[0].metricValue[1]", "boolean"),
        ([1, "2", 3, 4], "metrics[0].metricValue[1]", "integer count"),
        ({"0.1": [1, 2, 3]}, "metrics[0].metricValue", "between 2 and 15"),
        ({"0.1": [1, 2, 3, 4], "0.2": [1, 2, 3]}, 'metrics[0].metricValue["0.2"]', "got 3 elements"),
    ],
)
def test_confusion_matrix_invalid(value: Any, field: str, words: str) -> None:
    reject("metric", metric_event(cm(metricValue=value)), field, words)


def test_confusion_matrix_aggregation_only_confusion_matrix() -> None:
    err = reject(
        "metric", metric_event(cm(aggregation="SUM")), "metrics[0].aggregation", "only accepts CONFUSION_MATRIX"
    )
    assert "SUM" in err.reason


def test_confusion_matrix_metric_name_required() -> None:
    row = cm()
    del row["metricName"]
    reject("metric", metric_event(row), "metrics[0].metricName", "required for a confusion matrix")


# ---------------------------------------------------------------- metric rows: spellings, keys, uuids -


def test_metric_row_snake_and_camel_agree() -> None:
    snake = {"data_row": {"id": "d"}, "metric_name": "m", "feature_name": "cat", "subclass_name": "tall", "value": 1}
    camel = {"dataRow": {"id": "d"}, "metricName": "m", "featureName": "cat", "subclassName": "tall", "metricValue": 1}
    a, b = ok_metric(snake, camel).metrics
    assert a == b
    assert a.upsert_key() == ("id:d", "m", "cat", "tall")
    assert a.to_ndjson() == {
        "uuid": a.uuid,
        "dataRow": {"id": "d"},
        "metricValue": 1.0,
        "metricName": "m",
        "featureName": "cat",
        "subclassName": "tall",
        "aggregation": "ARITHMETIC_MEAN",
    }


def test_metric_row_unknown_field_rejected() -> None:
    reject(
        "metric", metric_event(scalar(metric_nme="x")), "metrics[0].metric_nme", "unknown", "did you mean metric_name"
    )


def test_metric_row_field_twice_rejected() -> None:
    reject("metric", metric_event(scalar(metricValue=1)), "metrics[0].metricValue", "given twice")


@pytest.mark.parametrize(("key", "value"), [("feature_name", 1), ("subclassName", ["x"])])
def test_metric_feature_names_must_be_strings(key: str, value: Any) -> None:
    reject("metric", metric_event(scalar(**{key: value})), f"metrics[0].{key}", "must be a string")


def test_metric_data_row_rules() -> None:
    reject("metric", metric_event(scalar(data_row={"id": "a", "globalKey": "b"})), "metrics[0].data_row", "got both")
    row = scalar()
    del row["data_row"]
    reject("metric", metric_event(row), "metrics[0].data_row", "required")


def test_metric_uuid_deterministic_from_key_and_value() -> None:
    base = ok_metric(scalar()).metrics[0]
    assert base.uuid == ok_metric(scalar()).metrics[0].uuid
    assert (
        base.uuid
        == parse_metric_row({"dataRow": {"id": "dr-1"}, "metricName": "acc", "metricValue": 0.5}, model_run_id=MR).uuid
    )
    assert base.uuid != ok_metric(scalar(value=0.6)).metrics[0].uuid
    assert base.uuid != ok_metric(scalar(feature_name="f")).metrics[0].uuid
    assert base.uuid != parse_metric_row(scalar(), model_run_id="mr-2").uuid
    assert ok_metric(scalar(uuid=U1)).metrics[0].uuid == U1
    reject("metric", metric_event(scalar(uuid=3)), "metrics[0].uuid", "must be a UUID string", "got a number")
    reject("metric", metric_event(scalar(uuid="given")), "metrics[0].uuid", "must be a UUID string", "'given'")


# ---------------------------------------------------------------- parse_ndjson_row --------------------


def test_parse_ndjson_row_dispatch() -> None:
    assert isinstance(parse_ndjson_row(cm(), model_run_id=MR), ConfusionMatrixMetricRow)
    assert isinstance(parse_ndjson_row({"dataRow": {"id": "d"}, "metricValue": 0.3}, model_run_id=MR), ScalarMetricRow)
    assert isinstance(parse_ndjson_row(bbox(), model_run_id=MR), PredictionRow)
    with pytest.raises(EventValidationError) as info:
        parse_ndjson_row({"dataRow": {"id": "d"}, "metricValue": 0.3, "name": "x"}, model_run_id=MR)
    assert info.value.field == "row.name"


def test_parse_ndjson_row_round_trips_to_ndjson() -> None:
    for row in (bbox(uuid=U1), cm(uuid=U2), scalar(uuid=U1)):
        parsed = (
            parse_ndjson_row(row, model_run_id=MR) if "value" not in row else parse_metric_row(row, model_run_id=MR)
        )
        again = parse_ndjson_row(parsed.to_ndjson(), model_run_id=MR)
        assert again == parsed


def test_row_parsers_do_not_mutate_input() -> None:
    row = bbox(customMetrics=[{"name": "m", "value": 1}], data_row=None)
    del row["data_row"]
    snapshot = orjson.dumps(row)
    parse_prediction_row(row, model_run_id=MR)
    assert orjson.dumps(row) == snapshot


def test_python_dict_with_unserializable_value_is_a_validation_error() -> None:
    with pytest.raises(EventValidationError):
        parse_prediction_row(bbox(bbox={1, 2}), model_run_id=MR)
    with pytest.raises(EventValidationError):
        parse_prediction_row(bbox(name="\ud800"), model_run_id=MR)


# ---------------------------------------------------------------- wire form ---------------------------


def test_event_to_json_round_trip() -> None:
    for kind, raw in (
        ("prediction", pred_event(bbox(), bbox(customMetrics=[{"name": "m", "value": 1}]))),
        ("metric", metric_event(scalar(), cm(), scalar(value={"0.1": 1, "0.2": 2}, aggregation="SUM"))),
        ("label", enc({"modelRunId": MR, "dataRowIds": ["a", "b"]})),
    ):
        ev = parse_event(kind, raw, max_bytes=MAX)  # type: ignore[arg-type]
        assert parse_event(kind, ev.to_json(), max_bytes=MAX) == ev  # type: ignore[arg-type]


def test_uuid_formulas_match_the_documented_uuid5() -> None:
    """Other tools (backfill, the local API) may recompute these; the module docstring is the contract."""
    row = ok_pred(bbox()).predictions[0]
    content = {k: v for k, v in row.to_ndjson().items() if k != "uuid"}
    name = MR + "\n" + orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode()
    assert row.uuid == str(uuid.uuid5(PREDICTION_UUID_NAMESPACE, name))
    m = ok_metric(scalar(feature_name="f")).metrics[0]
    name = orjson.dumps([MR, "id:dr-1", "acc", "f", None, 0.5]).decode()
    assert m.uuid == str(uuid.uuid5(METRIC_UUID_NAMESPACE, name))


def test_nan_and_infinity_literals_name_the_field() -> None:
    """Python's json.dumps writes NaN/Infinity; the error must point at the field, not just 'invalid JSON'."""
    import pytest as _pytest

    from service.errors import EventValidationError as _EVE
    from service.events import parse_event as _parse

    raw = b'{"model_run_id":"m","metrics":[{"data_row":{"id":"d"},"metric_name":"x","value":NaN}]}'
    with _pytest.raises(_EVE) as exc:
        _parse("metric", raw, max_bytes=10_000)
    assert exc.value.error_class == "schema"
    assert exc.value.field == "metrics[0].value"
    assert "finite" in str(exc.value)
    raw = (
        b'{"model_run_id":"m","predictions":[{"dataRow":{"id":"d"},"name":"x",'
        b'"customMetrics":[{"name":"a","value":-Infinity}]}]}'
    )
    with _pytest.raises(_EVE) as exc:
        _parse("prediction", raw, max_bytes=10_000)
    assert exc.value.field == "predictions[0].customMetrics[0].value"
