"""The parser's fast paths agree with the full validation path on every input they accept.

``_fast_prediction`` / ``_fast_metric`` handle the common row shapes in one pass and hand
anything else to the full path. A seeded fuzzer feeds both mostly-valid rows with odd values
mixed in (wrong types, NaN/inf, blanks, big ints, both spellings, nested answers, non-str keys)
and requires: where the fast path returns a row, the full path returns an identical one (same
fields, same types, same NDJSON key order, same uuid); where the full path rejects a row, the
fast path returns None; the fast path never modifies its input.
"""

from __future__ import annotations

import math
import random
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from service.errors import EventValidationError
from service.events import (
    ConfusionMatrixMetricRow,
    DataRowRef,
    LabelEvent,
    PredictionEvent,
    PredictionRow,
    ScalarMetricRow,
    _fast_metric,
    _fast_prediction,
    _parse_metric_full,
    _parse_prediction_full,
    parse_event,
    parse_upload,
)

N = 20_000

ODD: list[Any] = [
    None, "", " ", "\t", "\ud800", 0, 1, -1, 2, 2**53, 2**53 + 1, 2**70, True, False, 0.5, -0.0, 1.5,
    math.nan, math.inf, -math.inf, [], [1, 2, 3, 4], (1, 2, 3, 4), {}, {"a": math.nan}, {1: "x"},
    "iou", "F1 ", "acc", "CONFUSION_MATRIX", "SUM", "BOGUS",
]
TEXT = ["cat", "d-1", "img 7", "\u00e9t\u00e9", "box_iou", "50pct_iou"]


def pick(rnd: random.Random, good: list[Any], odd: float = 0.08) -> Any:
    return rnd.choice(ODD) if rnd.random() < odd else rnd.choice(good)


def number(rnd: random.Random) -> Any:
    return pick(rnd, [rnd.uniform(-1e6, 1e6), rnd.randint(-(10**6), 10**6), 0.25, 3])


def ref(rnd: random.Random) -> Any:
    r = {rnd.choice(["id", "globalKey"]): pick(rnd, TEXT)}
    if rnd.random() < 0.05:
        r[rnd.choice(["id", "globalKey", "global_key", "x"])] = pick(rnd, TEXT)
    return pick(rnd, [r], odd=0.05)


def extras(rnd: random.Random, row: dict[Any, Any], keys: list[Any]) -> dict[Any, Any]:
    for _ in range(rnd.choice([0, 0, 0, 1, 2])):
        row[rnd.choice(keys)] = rnd.choice(ODD + TEXT)
    if rnd.random() < 0.05:  # pop a common key
        row.pop(rnd.choice(list(row) or [None]), None)
    items = list(row.items())
    if rnd.random() < 0.3:
        rnd.shuffle(items)
    return dict(items)


def prediction_row(rnd: random.Random) -> dict[Any, Any]:
    row: dict[Any, Any] = {"dataRow": ref(rnd), "name": pick(rnd, TEXT)}
    row["bbox"] = {"top": number(rnd), "left": number(rnd)}
    if rnd.random() < 0.7:
        row["confidence"] = pick(rnd, [rnd.random(), 0, 1, 1.0])
    if rnd.random() < 0.7:
        cms = [{"name": pick(rnd, TEXT), "value": number(rnd)} for _ in range(rnd.randint(0, 3))]
        if cms and rnd.random() < 0.1:
            cms[0] = {"value": cms[0]["value"], "name": cms[0]["name"]}
        row["customMetrics"] = pick(rnd, [cms])
    if rnd.random() < 0.5:
        row["uuid"] = pick(rnd, [*TEXT, None])
    if rnd.random() < 0.05:
        row["schemaId"] = pick(rnd, [*TEXT, None])
    if rnd.random() < 0.05:
        row["name"] = None
    keys = ["data_row", "schema_id", "custom_metrics", "mask", "answer", "classifications", "extra", 7, "name"]
    return extras(rnd, row, keys)


def metric_row(rnd: random.Random) -> dict[Any, Any]:
    snake = rnd.random() < 0.4
    names = ("data_row", "metric_name", "feature_name", "subclass_name", "value") if snake else (
        "dataRow", "metricName", "featureName", "subclassName", "metricValue"
    )
    row: dict[Any, Any] = {names[0]: ref(rnd)}
    if rnd.random() < 0.5:
        row[names[4]] = pick(rnd, [[rnd.randint(0, 10**10) for _ in range(4)], [1, 2, 3, 4]])
        row[names[1]] = pick(rnd, TEXT)
        if rnd.random() < 0.3:
            row["aggregation"] = pick(rnd, ["CONFUSION_MATRIX"])
    else:
        row[names[4]] = number(rnd)
        if rnd.random() < 0.8:
            row[names[1]] = pick(rnd, TEXT)
        if rnd.random() < 0.5:
            row["aggregation"] = pick(rnd, ["ARITHMETIC_MEAN", "GEOMETRIC_MEAN", "HARMONIC_MEAN", "SUM"])
    if rnd.random() < 0.5:
        row[names[2]] = pick(rnd, TEXT)
    if rnd.random() < 0.3:
        row[names[3]] = pick(rnd, TEXT)
    if rnd.random() < 0.3:
        row["uuid"] = pick(rnd, [*TEXT, None])
    other = ("dataRow", "metricName", "featureName", "subclassName", "metricValue") if snake else (
        "data_row", "metric_name", "feature_name", "subclass_name", "value"
    )
    return extras(rnd, row, [*other, *names, "aggregation", "uuid", "extra"])


def same(fast: BaseModel, full: BaseModel) -> None:
    assert fast == full
    assert type(fast) is type(full)
    assert list(fast.__dict__) == list(type(fast).model_fields)
    for name in type(fast).model_fields:
        a, b = getattr(fast, name), getattr(full, name)
        assert type(a) is type(b), name
        if isinstance(a, BaseModel):
            same(a, b)
    assert fast.model_fields_set == full.model_fields_set
    assert repr(fast) == repr(full)
    assert fast.model_dump() == full.model_dump()


def outcome(fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except (EventValidationError, ValidationError) as exc:  # the public wrappers turn the latter into the former
        return exc


def from_json_possible(row: dict[Any, Any]) -> bool:
    try:
        return bool(orjson.loads(orjson.dumps(row)) == row) and "nan" not in repr(row) and "inf" not in repr(row)
    except (orjson.JSONEncodeError, TypeError):
        return False


@pytest.mark.parametrize("trusted", [True, False])
def test_fast_prediction_agrees_with_full_path(trusted: bool) -> None:
    rnd = random.Random(1234 + trusted)
    taken = 0
    for _ in range(N):
        row = prediction_row(rnd)
        if trusted and not from_json_possible(row):
            continue  # orjson.loads cannot produce it
        snapshot = repr(row)
        fast = _fast_prediction(row, "mr-1", trusted=trusted)
        assert repr(row) == snapshot, "the fast path must not modify its input"
        full = outcome(_parse_prediction_full, row, "mr-1", "p", trusted=trusted)
        if fast is None:
            continue
        taken += 1
        assert isinstance(full, PredictionRow), (row, full)
        same(fast, full)
        assert list(fast.ndjson) == list(full.ndjson)
        assert repr(fast.ndjson) == repr(full.ndjson)  # 1 == 1.0, but not in repr
    assert taken > N // 5, taken  # the fuzzer really exercises the fast path


def test_fast_metric_agrees_with_full_path() -> None:
    rnd = random.Random(99)
    taken = 0
    for _ in range(N):
        row = metric_row(rnd)
        snapshot = repr(row)
        fast = _fast_metric(row, "mr-1")
        assert repr(row) == snapshot, "the fast path must not modify its input"
        full = outcome(_parse_metric_full, row, "mr-1", "m")
        if fast is None:
            continue
        taken += 1
        assert isinstance(full, ScalarMetricRow | ConfusionMatrixMetricRow), (row, full)
        same(fast, full)
        assert repr(fast.to_ndjson()) == repr(full.to_ndjson())
    assert taken > N // 5, taken


def test_fast_paths_take_the_common_rows() -> None:
    """The shapes the benchmarks measure really go through the fast paths."""
    pred = {
        "dataRow": {"id": "d"},
        "name": "cat",
        "confidence": 1,
        "customMetrics": [{"name": "iou", "value": 1}],
        "bbox": {"top": 1},
    }
    assert _fast_prediction(pred, "m", trusted=False) is not None
    assert _fast_metric({"data_row": {"id": "d"}, "metric_name": "acc", "value": 0.5}, "m") is not None
    assert _fast_metric({"dataRow": {"globalKey": "g"}, "metricName": "cm", "metricValue": [1, 2, 3, 4]}, "m")


def test_built_models_match_validated_ones() -> None:
    ev = parse_event("label", b'{"model_run_id": "m", "global_keys": ["a"]}', max_bytes=1000)
    assert isinstance(ev, LabelEvent)
    same(ev, LabelEvent(model_run_id="m", global_keys=["a"]))
    same(DataRowRef(id="x"), DataRowRef(id="x"))


def _upload_from_event(kind: Any, raw: bytes) -> Any:
    """What the uploader sent before ``parse_upload``: parse_event, then each row's to_ndjson()."""
    try:
        ev = parse_event(kind, raw, max_bytes=1 << 20)
    except EventValidationError as exc:
        return (type(exc), str(exc))
    if isinstance(ev, LabelEvent):
        return ev
    rows = ev.predictions if kind == "prediction" else ev.metrics  # type: ignore[union-attr]
    return (ev.model_run_id, [(r.uuid, r.data_row.key()) for r in rows],
            b"\n".join(orjson.dumps(r.to_ndjson()) for r in rows))


def _upload(kind: Any, raw: bytes) -> Any:
    try:
        up = parse_upload(kind, raw, max_bytes=1 << 20)
    except EventValidationError as exc:
        return (type(exc), str(exc))
    return up if isinstance(up, LabelEvent) else tuple(up)


@pytest.mark.parametrize("seed", [7, 8])
def test_parse_upload_agrees_with_parse_event(seed: int) -> None:
    """The uploader's bytes-out path gives the same rows, uuids, NDJSON bytes and errors as parse_event."""
    rnd = random.Random(seed)
    taken = 0
    for i in range(N // 4):
        rows = [prediction_row(rnd) for _ in range(rnd.choice([1, 1, 1, 2, 3]))]
        if not all(from_json_possible(r) for r in rows):
            continue
        env: dict[str, Any] = {"model_run_id": rnd.choice(["mr-1", "run \u00e9", " ", ""])
                               if rnd.random() < 0.05 else "mr-1", "predictions": rows}
        if rnd.random() < 0.03:
            env = {"modelRunId": "mr-1", "prediction": rows[0]}
        if rnd.random() < 0.02:
            env["extra"] = 1
        raw = orjson.dumps(env)
        want = _upload_from_event("prediction", raw)
        got = _upload("prediction", raw)
        assert got == want, (i, raw)
        taken += isinstance(got, tuple) and isinstance(got[0], str)
    assert taken > N // 40, taken
    for _ in range(N // 8):
        metrics = [metric_row(rnd) for _ in range(2)]
        if not all(from_json_possible(m) for m in metrics):
            continue
        raw = orjson.dumps({"model_run_id": "mr-1", "metrics": metrics})
        assert _upload("metric", raw) == _upload_from_event("metric", raw), raw


def test_parse_upload_one_row_bytes() -> None:
    """The spliced uuid line is byte-for-byte the serialised NDJSON row, and a given uuid is kept."""
    row = {"dataRow": {"globalKey": "g"}, "name": "car", "confidence": 1, "bbox": {"top": 1}}
    raw = orjson.dumps({"model_run_id": "m", "predictions": [row]})
    up = parse_upload("prediction", raw, max_bytes=1 << 20)
    ev = parse_event("prediction", raw, max_bytes=1 << 20)
    assert not isinstance(up, LabelEvent) and isinstance(ev, PredictionEvent)
    assert up.payload == orjson.dumps(ev.predictions[0].to_ndjson())
    assert up.rows == [(ev.predictions[0].uuid, "gk:g")]
    given = parse_upload("prediction", orjson.dumps({"model_run_id": "m", "predictions": [row | {"uuid": "u-1"}]}),
                         max_bytes=1 << 20)
    assert not isinstance(given, LabelEvent) and given.rows == [("u-1", "gk:g")]
    assert orjson.loads(given.payload)["uuid"] == "u-1"
    lab = parse_upload("label", b'{"model_run_id": "m", "label_ids": ["l"]}', max_bytes=1 << 20)
    assert isinstance(lab, LabelEvent) and lab.label_ids == ["l"]
    with pytest.raises(EventValidationError):
        parse_upload("prediction", b"[]", max_bytes=1 << 20)
