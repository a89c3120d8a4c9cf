"""Producer client, pure part: events are batched, validated like the service, errors name the caller's row."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from service.errors import EventValidationError, MessageTooLargeError
from service.events import LabelEvent, MetricEvent, PredictionEvent, parse_event
from service.producer import MAX_IDS_PER_LABEL_EVENT, build_label_events, build_row_events


def pred(i: int, **extra: Any) -> dict[str, Any]:
    return {"dataRow": {"globalKey": f"img-{i}"}, "name": "cat", "point": {"x": i, "y": 1}, **extra}


def test_rows_are_batched_and_each_event_is_valid() -> None:
    events = build_row_events("prediction", "mr-1", [pred(i) for i in range(1201)], max_rows=500)
    assert len(events) == 3
    parsed = [parse_event("prediction", e, max_bytes=1 << 20) for e in events]
    assert all(isinstance(p, PredictionEvent) and p.model_run_id == "mr-1" for p in parsed)
    assert [len(p.predictions) for p in parsed] == [500, 500, 201]  # type: ignore[union-attr]


def test_error_names_the_callers_row_index() -> None:
    rows = [pred(i) for i in range(1200)]
    rows[1103] = pred(1103, dataRow={"id": "a", "globalKey": "b"})
    with pytest.raises(EventValidationError) as err:
        build_row_events("prediction", "mr-1", rows, max_rows=500)
    assert err.value.field == "predictions[1103].dataRow"
    assert err.value.error_class == "schema"


def test_same_error_as_the_service() -> None:
    bad = {"data_row": {"id": "d"}, "metric_name": "F1", "value": 1.0}
    with pytest.raises(EventValidationError) as ours:
        build_row_events("metric", "mr-1", [bad])
    with pytest.raises(EventValidationError) as service:
        parse_event("metric", orjson.dumps({"model_run_id": "mr-1", "metrics": [bad]}), max_bytes=1 << 20)
    assert (ours.value.field, ours.value.reason) == (service.value.field, service.value.reason)


def test_nan_is_rejected_not_turned_into_null() -> None:
    with pytest.raises(EventValidationError) as err:
        build_row_events("prediction", "mr-1", [pred(0), pred(1, confidence=float("nan"))])
    assert err.value.field == "predictions[1].confidence"


def test_unserializable_value_is_a_validation_error() -> None:
    with pytest.raises(EventValidationError, match="serialized"):
        build_row_events("prediction", "mr-1", [pred(0, extra=object())])


def test_events_over_the_size_limit_are_split_and_a_huge_row_is_refused() -> None:
    rows = [pred(i, name="x" * 400) for i in range(40)]
    events = build_row_events("prediction", "mr-1", rows, max_rows=500, max_bytes=4000)
    assert all(len(e) <= 4000 for e in events)
    total = sum(len(parse_event("prediction", e, max_bytes=4000).predictions) for e in events)  # type: ignore[union-attr]
    assert total == 40
    with pytest.raises(MessageTooLargeError):
        build_row_events("prediction", "mr-1", [pred(0, name="x" * 5000)], max_bytes=4000)


def test_empty_rows_make_no_events() -> None:
    assert build_row_events("metric", "mr-1", []) == []


def test_metric_rows_in_both_spellings() -> None:
    rows = [
        {"data_row": {"id": "d"}, "metric_name": "acc", "value": 0.5, "aggregation": "SUM"},
        {"dataRow": {"globalKey": "g"}, "metricName": "cm", "metricValue": [1, 2, 3, 4]},
    ]
    (event,) = build_row_events("metric", "mr-1", rows)
    parsed = parse_event("metric", event, max_bytes=1 << 20)
    assert isinstance(parsed, MetricEvent) and len(parsed.metrics) == 2


def test_label_events_need_exactly_one_selector() -> None:
    (event,) = build_label_events("mr-1", project_id="p-1")
    parsed = parse_event("label", event, max_bytes=1 << 20)
    assert isinstance(parsed, LabelEvent) and parsed.project_id == "p-1"
    with pytest.raises(EventValidationError):
        build_label_events("mr-1", label_ids=["a"], project_id="p")
    with pytest.raises(EventValidationError):
        build_label_events("mr-1")
    with pytest.raises(EventValidationError) as err:
        build_label_events("mr-1", global_keys=["a", ""])
    assert err.value.field == "global_keys[1]"
    with pytest.raises(EventValidationError):
        build_label_events("mr-1", label_ids=[])


def test_long_id_lists_are_split() -> None:
    ids = [f"dr-{i}" for i in range(MAX_IDS_PER_LABEL_EVENT + 5)]
    events = build_label_events("mr-1", data_row_ids=ids)
    got: list[str] = []
    for e in events:
        parsed = parse_event("label", e, max_bytes=1 << 20)
        assert isinstance(parsed, LabelEvent) and parsed.data_row_ids is not None
        got += parsed.data_row_ids
    assert got == ids and len(events) == 2
    with pytest.raises(EventValidationError) as err:
        build_label_events("mr-1", data_row_ids=[*ids[:-1], 7])  # type: ignore[list-item]
    assert err.value.field == f"data_row_ids[{len(ids) - 1}]"
