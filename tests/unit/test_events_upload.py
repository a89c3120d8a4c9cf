"""The uploader's bytes (``parse_upload``): uuids and NDJSON pinned byte for byte.

The expected values are golden output of the event contract; the uuids follow the documented uuid5
formulas (docs/EVENTS.md), so any change here breaks idempotent replays.
"""

# ruff: noqa: E501  (each golden message and payload stays on one line, as it is on the wire)
from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import EventValidationError
from service.events import LabelEvent, MetricEvent, PredictionEvent, parse_event, parse_upload
from service.events.constants import PREDICTION_UUID_NAMESPACE

MAX = 1 << 20

GOLDEN: list[tuple[str, bytes, list[tuple[str, str]], bytes]] = [
    (
        'prediction',
        b'{"model_run_id":"mr-1","predictions":[{"dataRow":{"globalKey":"img-1"},"name":"cat","bbox":{"top":1,"left":2,"height":3,"width":4},"confidence":1,"customMetrics":[{"value":1,"name":"iou"},{"name":"area","value":0.5}]},{"data_row":{"global_key":"img-2"},"schema_id":"sch-1","answer":[{"name":"a","custom_metrics":[{"name":"m","value":2}]},{"schemaId":"s-b","classifications":[{"name":"c","answer":"free"}]}]},{"uuid":"0b9e4a0c-3f5e-4d3a-9c57-7e1c2a9b1f10","dataRow":{"id":"dr-9"},"name":"seg","mask":{"png":"iVBOR"},"customMetrics":null}]}',
        [('5d2b819a-b745-5812-8f32-c9d412f23184', 'gk:img-1'), ('740ccf24-2347-5d36-8df3-565350537b6a', 'gk:img-2'), ('0b9e4a0c-3f5e-4d3a-9c57-7e1c2a9b1f10', 'id:dr-9')],
        b'{"uuid":"5d2b819a-b745-5812-8f32-c9d412f23184","dataRow":{"globalKey":"img-1"},"name":"cat","bbox":{"top":1,"left":2,"height":3,"width":4},"confidence":1.0,"customMetrics":[{"name":"iou","value":1.0},{"name":"area","value":0.5}]}\n{"uuid":"740ccf24-2347-5d36-8df3-565350537b6a","dataRow":{"globalKey":"img-2"},"schemaId":"sch-1","answer":[{"name":"a","customMetrics":[{"name":"m","value":2.0}]},{"schemaId":"s-b","classifications":[{"name":"c","answer":"free"}]}]}\n{"uuid":"0b9e4a0c-3f5e-4d3a-9c57-7e1c2a9b1f10","dataRow":{"id":"dr-9"},"name":"seg","mask":{"png":"iVBOR"}}',
    ),
    (  # rows sent as produced (the common shape), one given uuid, a multi-row payload
        'prediction',
        b'{"model_run_id":"mr-2","predictions":[{"dataRow":{"id":"dr-1"},"name":"car","confidence":0.25,"bbox":{"top":1,"left":2,"height":3,"width":4},"customMetrics":[{"name":"iou","value":0.5}]},{"dataRow":{"globalKey":"k"},"schemaId":"s-1","point":{"x":1,"y":2}},{"dataRow":{"id":"dr-2"},"name":"dog","confidence":0.5,"uuid":"0b9e4a0c-3f5e-4d3a-9c57-7e1c2a9b1f11","bbox":{"top":1,"left":2,"height":3,"width":4}}]}',
        [('5f851520-fc30-5524-83d7-773bf5ef2b1a', 'id:dr-1'), ('f51c24d8-b719-565d-88ec-e3731e130c41', 'gk:k'), ('0b9e4a0c-3f5e-4d3a-9c57-7e1c2a9b1f11', 'id:dr-2')],
        b'{"uuid":"5f851520-fc30-5524-83d7-773bf5ef2b1a","dataRow":{"id":"dr-1"},"name":"car","confidence":0.25,"bbox":{"top":1,"left":2,"height":3,"width":4},"customMetrics":[{"name":"iou","value":0.5}]}\n{"uuid":"f51c24d8-b719-565d-88ec-e3731e130c41","dataRow":{"globalKey":"k"},"schemaId":"s-1","point":{"x":1,"y":2}}\n{"uuid":"0b9e4a0c-3f5e-4d3a-9c57-7e1c2a9b1f11","dataRow":{"id":"dr-2"},"name":"dog","confidence":0.5,"bbox":{"top":1,"left":2,"height":3,"width":4}}',
    ),
    (  # the uploader bench's row: one row sent as produced
        'prediction',
        b'{"model_run_id":"bench-run-1","predictions":[{"dataRow":{"id":"dr-7"},"name":"car","confidence":0.8,"bbox":{"top":7,"left":7,"height":40,"width":67},"customMetrics":[{"name":"box_iou","value":0.07}]}]}',
        [('cf6ff84f-7237-5618-b999-ced1c52c62a9', 'id:dr-7')],
        b'{"uuid":"cf6ff84f-7237-5618-b999-ced1c52c62a9","dataRow":{"id":"dr-7"},"name":"car","confidence":0.8,"bbox":{"top":7,"left":7,"height":40,"width":67},"customMetrics":[{"name":"box_iou","value":0.07}]}',
    ),
    (
        'metric',
        b'{"modelRunId":"mr-1","metrics":[{"data_row":{"id":"dr-1"},"metric_name":"acc","value":1},{"dataRow":{"globalKey":"g"},"metricName":"box","featureName":"cat","subclassName":"tall","metricValue":{"0.50":1,"0.1":0.25},"aggregation":"SUM"},{"dataRow":{"id":"dr-1"},"metricName":"cm","metricValue":{"0.5":[1,2.0,3,4],"0.9":[0,0,0,1]}}]}',
        [('119fca07-a271-5603-ab79-2d99fff6214e', 'id:dr-1'), ('b7306fdd-cf7f-54dd-a0c0-915dbe353b35', 'gk:g'), ('33db235b-fa1c-5be6-95dd-f33041c21547', 'id:dr-1')],
        b'{"uuid":"119fca07-a271-5603-ab79-2d99fff6214e","dataRow":{"id":"dr-1"},"metricValue":1.0,"metricName":"acc","aggregation":"ARITHMETIC_MEAN"}\n{"uuid":"b7306fdd-cf7f-54dd-a0c0-915dbe353b35","dataRow":{"globalKey":"g"},"metricValue":{"0.5":1.0,"0.1":0.25},"metricName":"box","featureName":"cat","subclassName":"tall","aggregation":"SUM"}\n{"uuid":"33db235b-fa1c-5be6-95dd-f33041c21547","dataRow":{"id":"dr-1"},"metricValue":{"0.5":[1,2,3,4],"0.9":[0,0,0,1]},"metricName":"cm","aggregation":"CONFUSION_MATRIX"}',
    ),
]


@pytest.mark.parametrize(("kind", "raw", "rows", "payload"), GOLDEN)
def test_parse_upload_bytes_are_pinned(kind: Any, raw: bytes, rows: list[tuple[str, str]], payload: bytes) -> None:
    up = parse_upload(kind, raw, max_bytes=MAX)
    assert not isinstance(up, LabelEvent)
    assert up.model_run_id == orjson.loads(raw)["model_run_id" if b'"model_run_id"' in raw else "modelRunId"]
    assert up.rows == rows
    assert up.payload == payload


@pytest.mark.parametrize(("kind", "raw", "rows", "payload"), GOLDEN)
def test_parse_upload_agrees_with_parse_event(
    kind: Any, raw: bytes, rows: list[tuple[str, str]], payload: bytes
) -> None:
    """What the uploader sends == each parsed row's to_ndjson(), as the aggregator and tools see it."""
    ev = parse_event(kind, raw, max_bytes=MAX)
    parsed = ev.predictions if isinstance(ev, PredictionEvent) else ev.metrics if isinstance(ev, MetricEvent) else []
    assert [(r.uuid, r.data_row.key()) for r in parsed] == rows
    assert b"\n".join(orjson.dumps(r.to_ndjson()) for r in parsed) == payload


def test_parse_upload_label_and_errors() -> None:
    lab = parse_upload("label", b'{"model_run_id": "m", "label_ids": ["l"]}', max_bytes=MAX)
    assert isinstance(lab, LabelEvent) and lab.label_ids == ["l"]
    with pytest.raises(EventValidationError):
        parse_upload("prediction", b"[]", max_bytes=MAX)
    with pytest.raises(EventValidationError, match="UUID"):
        parse_upload("prediction", b'{"model_run_id":"m","prediction":{"dataRow":{"id":"d"},"name":"x","uuid":"u"}}',
                     max_bytes=MAX)


# Rows sent as produced (no rewrite) and rows that need one, mixed: what parse_upload sends must stay
# what each parsed row's to_ndjson() says, whichever path a row takes.
_ident = st.text(min_size=1, max_size=6).filter(lambda s: s.strip() != "")
_unit = st.one_of(st.floats(min_value=0.0, max_value=1.0), st.sampled_from([0, 1, -0.0]))
_num = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-5, 5))


@st.composite
def _row(draw: st.DrawFn) -> dict[str, Any]:
    row: dict[str, Any] = {}
    ref = draw(st.sampled_from([{"id": "dr-1"}, {"globalKey": "g 1"}, {"id": "dr-2", "globalKey": None},
                                {"global_key": "g2"}]))
    names = [draw(st.sampled_from(["dataRow", "data_row"]))]
    names += draw(st.lists(st.sampled_from(["name", "schemaId", "schema_id", "confidence", "customMetrics",
                                            "custom_metrics", "uuid", "bbox", "answer", "extra"]),
                           unique=True, max_size=6))
    for k in draw(st.permutations(names)):
        if k in ("dataRow", "data_row"):
            row[k] = ref
        elif k in ("name", "schemaId", "schema_id"):
            row[k] = draw(st.one_of(_ident, st.none()))
        elif k == "confidence":
            row[k] = draw(st.one_of(_unit, st.none()))
        elif k in ("customMetrics", "custom_metrics"):
            row[k] = draw(st.one_of(st.none(), st.lists(st.one_of(
                st.builds(lambda n, v: {"name": n, "value": v}, _ident, _num),
                st.builds(lambda n, v: {"value": v, "name": n}, _ident, _num)), max_size=2)))
        elif k == "uuid":
            row[k] = draw(st.one_of(st.none(), st.uuids().map(str)))
        elif k == "answer":
            row[k] = {"name": draw(_ident)}
        else:
            row[k] = draw(st.one_of(_num, st.dictionaries(_ident, _num, max_size=2)))
    if not any(row.get(k) is not None for k in ("name", "schemaId", "schema_id")):
        row["name"] = "n"
    return row


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_row(), min_size=1, max_size=3))
def test_parse_upload_bytes_match_the_parsed_rows(rows: list[dict[str, Any]]) -> None:
    raw = orjson.dumps({"model_run_id": "mr-1", "predictions": rows})
    try:
        ev = parse_event("prediction", raw, max_bytes=MAX)
    except EventValidationError:
        with pytest.raises(EventValidationError):
            parse_upload("prediction", raw, max_bytes=MAX)
        return
    assert isinstance(ev, PredictionEvent)
    up = parse_upload("prediction", raw, max_bytes=MAX)
    assert not isinstance(up, LabelEvent)
    assert up.rows == [(r.uuid, r.data_row.key()) for r in ev.predictions]
    assert up.payload == b"\n".join(orjson.dumps(r.to_ndjson()) for r in ev.predictions)


def test_a_row_sent_as_produced_has_the_documented_uuid() -> None:
    raw = b'{"model_run_id":"mr-1","predictions":[{"dataRow":{"id":"dr-1"},"name":"car","confidence":0.5,"customMetrics":[{"name":"iou","value":0.25}]}]}'
    body = orjson.loads(raw)["predictions"][0]
    name = b"mr-1\n" + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    expected = str(uuid.uuid5(PREDICTION_UUID_NAMESPACE, name.decode()))
    up = parse_upload("prediction", raw, max_bytes=MAX)
    assert not isinstance(up, LabelEvent)
    assert up.rows == [(expected, "id:dr-1")]
    assert up.payload == b'{"uuid":"' + expected.encode() + b'",' + orjson.dumps(body)[1:]


@pytest.mark.parametrize(
    "row",
    [
        {"dataRow": {"id": "d"}, "name": "car", "confidence": 0.5, "customMetrics": [{"name": "m", "value": 0.5}]},
        {"dataRow": {"id": "d"}, "name": "car", "confidence": 1, "customMetrics": [{"name": "m", "value": 0.5}]},
        {"dataRow": {"id": "d"}, "name": "car", "confidence": 0.5, "customMetrics": [{"name": "m", "value": 1}]},
        {"dataRow": {"id": "d"}, "name": "car", "confidence": 0.5, "customMetrics": [{"value": 0.5, "name": "m"}]},
        {"dataRow": {"id": "d"}, "name": "car", "confidence": 0.5, "customMetrics": []},
        {"dataRow": {"id": "d"}, "name": "car", "confidence": 0.5, "customMetrics": None},
        {"dataRow": {"id": "d"}, "name": "car", "confidence": 0.5, "schemaId": None, "customMetrics": [{"name": "m", "value": 0.5}]},
        {"dataRow": {"id": "d"}, "name": None, "schemaId": "s", "confidence": 0.5, "customMetrics": [{"name": "m", "value": 0.5}]},
        {"dataRow": {"id": "d"}, "name": "car", "confidence": None, "customMetrics": [{"name": "m", "value": 0.5}]},
        {"dataRow": {"globalKey": "g"}, "name": "car", "confidence": 0.5, "customMetrics": [{"name": "m", "value": 0.5}]},
        {"dataRow": {"global_key": "g"}, "name": "car", "confidence": 0.5, "customMetrics": [{"name": "m", "value": 0.5}]},
        {"data_row": {"id": "d"}, "name": "car", "confidence": 0.5, "customMetrics": [{"name": "m", "value": 0.5}]},
        {"dataRow": {"id": "d"}, "name": "car", "confidence": 0.5, "custom_metrics": [{"name": "m", "value": 0.5}]},
        {"dataRow": {"id": "d", "globalKey": None}, "name": "car", "confidence": 0.5, "customMetrics": [{"name": "m", "value": 0.5}]},
        {"dataRow": {"id": "d"}, "name": "car", "confidence": 0.5, "customMetrics": [{"name": "m", "value": 0.5}, {"name": "n", "value": 1}]},
        {"uuid": None, "dataRow": {"id": "d"}, "name": "car", "confidence": 0.5, "customMetrics": [{"name": "m", "value": 0.5}]},
        {
            "dataRow": {"id": "d"},
            "name": "car",
            "confidence": 0.5,
            "customMetrics": [{"name": "m", "value": 0.5}],
            "classifications": [{"name": "c", "answer": {"name": "a", "custom_metrics": [{"name": "k", "value": 1}]}}],
        },
    ],
)
def test_rows_near_the_common_shape_match_their_parsed_form(row: dict[str, Any]) -> None:
    """The as-is shortcut of parse_upload takes only rows already in NDJSON form; every near miss is rewritten."""
    raw = orjson.dumps({"model_run_id": "mr-1", "predictions": [row]})
    ev = parse_event("prediction", raw, max_bytes=MAX)
    assert isinstance(ev, PredictionEvent)
    up = parse_upload("prediction", raw, max_bytes=MAX)
    assert not isinstance(up, LabelEvent)
    assert up.rows == [(r.uuid, r.data_row.key()) for r in ev.predictions]
    assert up.payload == b"\n".join(orjson.dumps(r.to_ndjson()) for r in ev.predictions)


def test_a_long_model_run_id_gets_the_documented_uuid_and_is_not_kept() -> None:
    from service.events import uuids

    run = "r" * 300
    row = {"dataRow": {"id": "dr-1"}, "name": "car", "confidence": 0.5, "customMetrics": [{"name": "iou", "value": 0.25}]}
    raw = orjson.dumps({"model_run_id": run, "predictions": [row]})
    name = run.encode() + b"\n" + orjson.dumps(row, option=orjson.OPT_SORT_KEYS)
    up = parse_upload("prediction", raw, max_bytes=MAX)
    assert not isinstance(up, LabelEvent)
    assert up.rows == [(str(uuid.uuid5(PREDICTION_UUID_NAMESPACE, name.decode())), "id:dr-1")]
    assert run not in uuids._PREFIX_HASHES
    parse_upload("prediction", raw.replace(run.encode(), b"mr-short"), max_bytes=MAX)
    assert "mr-short" in uuids._PREFIX_HASHES
