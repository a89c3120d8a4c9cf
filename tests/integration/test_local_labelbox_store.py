"""The local Labelbox store on a real SQLite file: upsert order within and across imports, restarts."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import orjson

from devstack.local_labelbox.imports import plan_import
from devstack.local_labelbox.store import Store
from service.events import parse_ndjson_row

BOX = {"top": 1, "left": 1, "height": 1, "width": 1}


def U(name: str) -> str:
    """A UUID per name (rows with a uuid must carry a UUID)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def _import(store: Store, name: str, rows: list[dict[str, object]]) -> None:
    payload = b"\n".join(orjson.dumps(r) for r in rows)
    rec = store.create_import("mr", name, "file", None, payload, False)
    assert rec is not None
    ids, gks = store.run_members("mr")
    plan = plan_import(
        payload, model_run_id="mr", import_id=rec.id, run_data_row_ids=ids, run_global_keys=gks,
        parse_row=parse_ndjson_row,
    )
    store.finish_import(rec, plan)


def _seed(store: Store) -> None:
    store.seed_data_rows([{"id": "d1", "globalKey": "g1"}, {"id": "d2"}])
    store.create_model_run(name="run", model_id="m", run_id="mr")
    store.register_data_rows("mr", ["d1", "d2"], None)


ROWS: list[dict[str, object]] = [
    {"uuid": U("a"), "name": "car", "dataRow": {"id": "d1"}, "bbox": BOX, "confidence": 0.1},
    {"dataRow": {"id": "d2"}, "metricValue": 0.1, "metricName": "m", "featureName": "car"},
    {"uuid": U("b"), "name": "car", "dataRow": {"id": "d2"}, "bbox": BOX},
    # Same uuid again in the same import: the repeat fails (Labelbox's rule), the first row stands.
    # Same metric key again: the later row wins.
    {"uuid": U("a"), "name": "bus", "dataRow": {"globalKey": "g1"}, "bbox": BOX, "confidence": 0.9},
    {"dataRow": {"id": "d2"}, "metricValue": 0.7, "metricName": "m", "featureName": "car"},
]


def test_repeated_keys_in_one_import_and_replay_is_harmless(tmp_path: Path) -> None:
    db = str(tmp_path / "s.sqlite3")
    store = Store(db)
    _seed(store)
    _import(store, "first", ROWS)
    preds = store.predictions("mr")
    metrics = store.metrics("mr")
    first = [(p["dataRowId"], p["row"]["name"], p["row"]["confidence"]) for p in preds if p["uuid"] == U("a")]
    assert first == [("d1", "car", 0.1)]
    assert sorted(p["uuid"] for p in preds) == sorted([U("a"), U("b")])
    assert [(m["dataRowId"], m["metricName"], m["featureName"], m["metricValue"]) for m in metrics] == [
        ("d2", "m", "car", 0.7)
    ]
    assert store.counts("mr") == {"dataRows": 2, "predictions": 2, "metrics": 1, "imports": 1}

    _import(store, "replay", ROWS)
    assert store.predictions("mr") == preds and store.metrics("mr") == metrics
    store.close()

    reopened = Store(db)
    assert reopened.predictions("mr") == preds and reopened.metrics("mr") == metrics
    assert reopened.counts("mr")["imports"] == 2 and reopened.integrity_ok()
    reopened.close()


def test_existing_file_keeps_its_page_size(tmp_path: Path) -> None:
    db = str(tmp_path / "old.sqlite3")
    con = sqlite3.connect(db)
    con.execute("PRAGMA page_size=4096")
    con.execute("CREATE TABLE unrelated(x)")
    con.close()
    store = Store(db)
    _seed(store)
    _import(store, "first", ROWS)
    assert store.counts("mr")["predictions"] == 2 and store.integrity_ok()
    store.close()


def test_counts_follow_every_write_of_the_run(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "c.sqlite3"))
    store.seed_data_rows([{"id": "d1", "globalKey": "g1"}, {"id": "d2"}, {"id": "d3"}])
    store.create_model_run(name="run", model_id="m", run_id="mr")
    store.create_model_run(name="other", model_id="m", run_id="other")
    assert store.counts("mr") == {"dataRows": 0, "predictions": 0, "metrics": 0, "imports": 0}
    store.register_data_rows("mr", ["d1", "d2"], None)
    assert store.counts("mr")["dataRows"] == 2
    counted = store.counts("mr")
    counted["predictions"] = 99  # a caller's copy, not the store's
    _import(store, "first", ROWS)
    assert store.counts("mr") == {"dataRows": 2, "predictions": 2, "metrics": 1, "imports": 1}
    assert store.counts("other") == {"dataRows": 0, "predictions": 0, "metrics": 0, "imports": 0}
    _import(store, "more", [{"uuid": U("c"), "name": "car", "dataRow": {"id": "d1"}, "bbox": BOX}])
    store.register_data_rows("mr", ["d3"], None)
    assert store.counts("mr") == {"dataRows": 3, "predictions": 3, "metrics": 1, "imports": 2}
    assert store.create_import("mr", "more", "file", None, b"", False) is None  # name taken: no change
    assert store.counts("mr")["imports"] == 2
    store.close()
