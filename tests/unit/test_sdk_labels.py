"""Labelbox SDK objects into events: the examples of Labelbox's custom-metrics guide, built with the
real SDK classes, serialized by the SDK's own NDJsonConverter, validated like the service does."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import orjson
import pytest
from labelbox.data.annotation_types import (
    Checklist,
    ClassificationAnnotation,
    ClassificationAnswer,
    ConfusionMatrixMetric,
    Label,
    Mask,
    MaskData,
    ObjectAnnotation,
    Point,
    Radio,
    Rectangle,
    ScalarMetric,
    ScalarMetricAggregation,
    Text,
)
from labelbox.data.mixins import CustomMetric
from pydantic import ValidationError

from service.errors import EventValidationError
from service.events import MetricEvent, PredictionEvent, parse_event
from service.sdk_labels import EXTRA, MissingExtraError, build_label_row_events, labels_to_rows


def metric_rows(events: dict[str, list[bytes]]) -> list[dict[str, Any]]:
    return [r for e in events["metric"] for r in orjson.loads(e)["metrics"]]


def prediction_rows(events: dict[str, list[bytes]]) -> list[dict[str, Any]]:
    return [r for e in events["prediction"] for r in orjson.loads(e)["predictions"]]


def test_guide_scalar_metrics_at_every_granularity() -> None:
    label = Label(
        data={"global_key": "img-1"},
        annotations=[
            ScalarMetric(metric_name="iou_custom", value=0.5),
            ScalarMetric(metric_name="iou_custom", feature_name="cat", value=0.5),
            ScalarMetric(metric_name="iou_custom", feature_name="cat", subclass_name="orange", value=0.5),
        ],
    )
    events = build_label_row_events("mr-1", [label])
    assert events["prediction"] == []
    parsed = parse_event("metric", events["metric"][0], max_bytes=1 << 20)
    assert isinstance(parsed, MetricEvent)
    assert metric_rows(events) == [
        {"dataRow": {"globalKey": "img-1"}, "metricValue": 0.5, "metricName": "iou_custom",
         "aggregation": "ARITHMETIC_MEAN"},
        {"dataRow": {"globalKey": "img-1"}, "metricValue": 0.5, "featureName": "cat", "metricName": "iou_custom",
         "aggregation": "ARITHMETIC_MEAN"},
        {"dataRow": {"globalKey": "img-1"}, "metricValue": 0.5, "featureName": "cat", "subclassName": "orange",
         "metricName": "iou_custom", "aggregation": "ARITHMETIC_MEAN"},
    ]  # fmt: skip
    places = [(m.feature_name, m.subclass_name) for m in parsed.metrics]
    assert places == [(None, None), ("cat", None), ("cat", "orange")]


def test_the_guides_plain_iou_name_is_refused_by_the_sdk_itself() -> None:
    # The guide writes ScalarMetric(metric_name="iou", ...); SDK 7.17 reserves "iou" for ScalarMetric,
    # so that line fails in the user's script before runstream sees anything.
    with pytest.raises(ValidationError, match="reserved metric name"):
        ScalarMetric(metric_name="iou", value=0.5)


@pytest.mark.parametrize("aggregation", list(ScalarMetricAggregation))
def test_every_scalar_aggregation(aggregation: ScalarMetricAggregation) -> None:
    label = Label(
        data={"uid": "ckrmdnqj4000007msh9p2a27r"},
        annotations=[ScalarMetric(metric_name="m", feature_name="cat", value=2, aggregation=aggregation)],
    )
    (row,) = metric_rows(build_label_row_events("mr-1", [label]))
    assert row["aggregation"] == aggregation.value
    assert row["dataRow"] == {"id": "ckrmdnqj4000007msh9p2a27r"}
    assert row["metricValue"] == 2.0


def test_sum_example_rows() -> None:
    label = Label(
        data={"global_key": "img-1"},
        annotations=[
            ScalarMetric(metric_name="true_positives", feature_name="cat", value=3,
                         aggregation=ScalarMetricAggregation.SUM),
            ScalarMetric(metric_name="true_positives", feature_name="dog", value=4,
                         aggregation=ScalarMetricAggregation.SUM),
        ],
    )  # fmt: skip
    rows = metric_rows(build_label_row_events("mr-1", [label]))
    assert [(r["featureName"], r["metricValue"], r["aggregation"]) for r in rows] == [
        ("cat", 3.0, "SUM"),
        ("dog", 4.0, "SUM"),
    ]


def test_a_benchmark_label_is_accepted_and_its_flag_is_not_part_of_the_metric() -> None:
    label = Label(
        data={"global_key": "img-1"},
        is_benchmark_reference=True,
        annotations=[
            ScalarMetric(metric_name="iou_custom", feature_name="cat", value=0.5),
            ObjectAnnotation(name="cat", value=Rectangle(start=Point(x=1, y=2), end=Point(x=3, y=4)),
                             custom_metrics=[CustomMetric(name="iou_custom", value=0.25)]),
        ],
    )  # fmt: skip
    events = build_label_row_events("mr-1", [label])
    (row,) = metric_rows(events)
    assert row["isBenchmarkReferenceLabel"] is True  # what the SDK's serializer writes on every row
    parsed = parse_event("metric", events["metric"][0], max_bytes=1 << 20)
    assert isinstance(parsed, MetricEvent)
    assert "isBenchmarkReferenceLabel" not in parsed.metrics[0].to_ndjson()
    prediction = parse_event("prediction", events["prediction"][0], max_bytes=1 << 20)
    assert isinstance(prediction, PredictionEvent)
    assert prediction.predictions[0].to_ndjson()["isBenchmarkReferenceLabel"] is True


def test_confidence_keyed_values_have_string_keys_like_the_sdks_import_file() -> None:
    label = Label(
        data={"global_key": "img-1"},
        annotations=[
            ScalarMetric(metric_name="iou_custom", feature_name="cat", value={0.1: 0.2, 0.3: 0.5, 0.5: 0.8}),
            ConfusionMatrixMetric(metric_name="50pct_iou", feature_name="cat", subclass_name="orange",
                                  value=(0, 1, 2, 3)),
            ConfusionMatrixMetric(metric_name="cm_conf", feature_name="cat",
                                  value={0.1: (0, 1, 2, 3), 0.9: (1, 1, 0, 2)}),
        ],
    )  # fmt: skip
    events = build_label_row_events("mr-1", [label])
    rows = metric_rows(events)
    assert rows[0]["metricValue"] == {"0.1": 0.2, "0.3": 0.5, "0.5": 0.8}
    assert rows[1]["metricValue"] == [0, 1, 2, 3] and rows[1]["aggregation"] == "CONFUSION_MATRIX"
    assert rows[2]["metricValue"] == {"0.1": [0, 1, 2, 3], "0.9": [1, 1, 0, 2]}
    parsed = parse_event("metric", events["metric"][0], max_bytes=1 << 20)
    assert isinstance(parsed, MetricEvent)
    assert parsed.metrics[0].value == {0.1: 0.2, 0.3: 0.5, 0.5: 0.8}


def test_annotations_with_custom_metrics() -> None:
    label = Label(
        data={"global_key": "img-1"},
        annotations=[
            ObjectAnnotation(name="cat", value=Rectangle(start=Point(x=1, y=2), end=Point(x=5, y=6)),
                             custom_metrics=[CustomMetric(name="iou", value=0.5)]),
            ClassificationAnnotation(name="weather", value=Radio(answer=ClassificationAnswer(
                name="sunny", custom_metrics=[CustomMetric(name="agreement", value=0.7)]))),
            ClassificationAnnotation(name="tags", value=Checklist(answer=[ClassificationAnswer(
                name="outdoor", custom_metrics=[CustomMetric(name="agreement", value=0.6)])])),
            ClassificationAnnotation(name="caption", value=Text(
                answer="a cat", custom_metrics=[CustomMetric(name="bleu", value=0.4)])),
        ],
    )  # fmt: skip
    events = build_label_row_events("mr-1", [label])
    assert events["metric"] == []
    parsed = parse_event("prediction", events["prediction"][0], max_bytes=1 << 20)
    assert isinstance(parsed, PredictionEvent)
    leaves = [leaf for p in parsed.predictions for leaf in p.custom_metric_leaves()]
    assert [(lf.feature, lf.subclass, lf.name, lf.value) for lf in leaves] == [
        ("cat", None, "iou", 0.5),
        ("weather", "sunny", "agreement", 0.7),
        ("tags", "outdoor", "agreement", 0.6),
        ("caption", None, "bleu", 0.4),
    ]
    rows = prediction_rows(events)
    assert rows[0]["bbox"] == {"top": 2.0, "left": 1.0, "height": 4.0, "width": 4.0}
    # the SDK's uuid of each annotation is kept: Labelbox upserts by it
    assert [r["uuid"] for r in rows] == [str(a._uuid) for a in label.annotations]


def test_mixed_labels_split_by_kind_and_remember_their_label() -> None:
    labels = [
        Label(data={"global_key": "a"}, annotations=[ScalarMetric(metric_name="m", value=1.0)]),
        Label(data={"global_key": "b"}, annotations=[
            ObjectAnnotation(name="cat", value=Point(x=1, y=1)), ScalarMetric(metric_name="m", value=2.0)]),
    ]  # fmt: skip
    rows = labels_to_rows(labels)
    assert rows.metric_origin == [(0, 0), (1, 0)]
    assert rows.prediction_origin == [(1, 0)]


def test_a_bad_row_names_its_label() -> None:
    labels = [
        Label(data={"global_key": "a"}, annotations=[ScalarMetric(metric_name="m", value=1.0)]),
        # the SDK does not enforce the declared value range; NaN is not JSON, so the service refuses it
        Label(data={"global_key": "b"}, annotations=[
            ScalarMetric(metric_name="m", value=1.0), ScalarMetric(metric_name="m", value=float("nan"))]),
    ]  # fmt: skip
    with pytest.raises(EventValidationError) as err:
        build_label_row_events("mr-1", labels)
    assert err.value.field == "labels[1].metrics[1].metricValue"


def test_a_row_the_service_rejects_names_its_label_and_row() -> None:
    labels = [
        Label(data={"global_key": "a"}, annotations=[ObjectAnnotation(name="cat", value=Point(x=1, y=1))]),
        Label(data={"global_key": "b"}, annotations=[
            ObjectAnnotation(name="cat", value=Point(x=1, y=1)),
            # Labelbox does not support customMetrics on raster masks; the SDK serializes them anyway
            ObjectAnnotation(name="dog", value=Mask(mask=MaskData(arr=np.zeros((4, 4, 3), dtype=np.uint8)),
                                                    color=(255, 255, 255)),
                             custom_metrics=[CustomMetric(name="iou", value=1)]),
        ]),
    ]  # fmt: skip
    with pytest.raises(EventValidationError) as err:
        build_label_row_events("mr-1", labels)
    assert err.value.field == "labels[1].predictions[1].customMetrics"


def test_not_a_label() -> None:
    with pytest.raises(EventValidationError) as err:
        build_label_row_events("mr-1", [Label(data={"global_key": "a"}), {"dataRow": {"globalKey": "a"}}])
    assert err.value.field == "labels[1]"
    assert "Label" in err.value.reason and "dict" in err.value.reason


def test_without_the_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # An import of a module mapped to None raises ImportError, as a missing package does.
    monkeypatch.setitem(sys.modules, "labelbox.data.serialization.ndjson.converter", None)
    with pytest.raises(MissingExtraError) as err:
        labels_to_rows([])
    assert EXTRA in str(err.value) and "pip install" in str(err.value)
