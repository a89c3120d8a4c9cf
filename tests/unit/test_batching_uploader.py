"""The uploader's pure parts: intake (validate, reduce, account), import names, the row cache."""

from __future__ import annotations

import orjson

from consumers.runtime import Accepted, Record, Rejection
from consumers.uploader import Item, LruSet, UploaderHandler, import_name
from service.config import Settings
from service.prometheus import ConsumerMetrics


def handler(max_bytes: int = 10_000) -> UploaderHandler:
    s = Settings(kafka_bootstrap="x", labelbox_api_key="k", max_message_bytes=max_bytes)
    return UploaderHandler(None, s, ConsumerMetrics.create(), {"p": "prediction", "m": "metric",  # type: ignore[arg-type]
                                                             "l": "label"})


def rec(topic: str, value: bytes | None, offset: int = 0) -> Record:
    return Record(topic, 0, offset, b"mr", value, 0)


ROW = {"dataRow": {"id": "dr-1"}, "name": "cat", "bbox": {"top": 1, "left": 2, "height": 3, "width": 4}}


def test_prediction_is_reduced_to_ndjson_and_accounted() -> None:
    res = handler().intake(rec("p", orjson.dumps({"model_run_id": "mr", "predictions": [ROW, ROW | {"name": "dog"}]})))
    assert isinstance(res, Accepted) and res.key == "mr"
    item: Item = res.item
    assert [k for _, k in item.rows] == ["id:dr-1", "id:dr-1"]
    lines = [orjson.loads(x) for x in item.payload.split(b"\n")]
    assert [x["name"] for x in lines] == ["cat", "dog"] and all("uuid" in x for x in lines)
    assert [x["uuid"] for x in lines] == [u for u, _ in item.rows]
    assert res.size > len(item.payload) + 600  # payload + the Python objects holding it


def test_same_row_same_uuid() -> None:
    h = handler()
    a = h.intake(rec("p", orjson.dumps({"model_run_id": "mr", "prediction": ROW})))
    b = h.intake(rec("p", orjson.dumps({"modelRunId": "mr", "predictions": [ROW]}), offset=9))
    assert isinstance(a, Accepted) and isinstance(b, Accepted)
    assert a.item.rows == b.item.rows


def test_rejections_carry_class_and_message() -> None:
    h = handler(max_bytes=50)
    too_big = h.intake(rec("p", b"{" + b" " * 100 + b"}"))
    assert isinstance(too_big, Rejection) and too_big.error_class == "too_large"
    bad = handler().intake(rec("m", b"[]"))
    assert isinstance(bad, Rejection) and bad.error_class == "json"
    unknown = handler().intake(rec("zzz", b"{}"))
    assert isinstance(unknown, Rejection) and "not an uploader input topic" in unknown.message


def test_label_event_kept_whole() -> None:
    res = handler().intake(rec("l", orjson.dumps({"model_run_id": "mr", "label_ids": ["a", "b"]})))
    assert isinstance(res, Accepted) and res.item.label is not None and res.item.label.label_ids == ["a", "b"]


def test_import_name_is_deterministic_per_source_messages() -> None:
    items = [(rec("p", b"x", o), Item("mr", [])) for o in (1, 2, 3)]
    assert import_name("mr", items, 0) == import_name("mr", list(items), 0)
    assert import_name("mr", items, 0) != import_name("mr", items[:2], 0)
    assert import_name("mr", items, 1) == import_name("mr", items, 0) + "-r1"
    assert import_name("mr2", items, 0) != import_name("mr", items, 0)


def test_lru_set_is_bounded() -> None:
    s = LruSet(2)
    s.add(("r", "a"))
    s.add(("r", "b"))
    assert ("r", "a") in s  # touch: b is now the oldest
    s.add(("r", "c"))
    assert len(s) == 2 and ("r", "b") not in s and ("r", "a") in s
