"""The official labelbox SDK against the local Labelbox API, over a real socket.

The SDK is synchronous, so it runs in a worker thread (asyncio.to_thread) while the server
runs on the test loop. Registration tasks complete at once (no SDK sleep); for imports we
call ``wait_till_done(sleep_time_seconds=0.05)`` - an SDK argument - before reading
statuses, so no transport is patched.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import labelbox
import pytest
from labelbox import DataSplit
from labelbox.schema.annotation_import import MEAPredictionImport
from labelbox.schema.model import Model
from lbox import exceptions as lbx

from devstack.local_labelbox import LocalLabelbox

API_KEY = "test-key"
ADMIN = "admin-secret"


class Admin:
    """Tiny admin API client (real HTTP)."""

    def __init__(self, server: LocalLabelbox, session: aiohttp.ClientSession) -> None:
        self.base = server.admin_url
        self.s = session
        self.h = {"Authorization": f"Bearer {ADMIN}"}

    async def post(self, path: str, body: Any) -> Any:
        async with self.s.post(self.base + path, json=body, headers=self.h) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def get(self, path: str) -> Any:
        async with self.s.get(self.base + path, headers=self.h) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def delete(self, path: str) -> Any:
        async with self.s.delete(self.base + path, headers=self.h) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def seed_world(self, n_rows: int = 4) -> dict[str, Any]:
        tag = uuid.uuid4().hex[:8]
        dr = await self.post(
            "/data-rows", {"dataRows": [{"id": f"dr-{tag}-{i}", "globalKey": f"gk-{tag}-{i}"} for i in range(n_rows)]}
        )
        (project,) = (await self.post("/projects", {"projects": [{"id": f"p-{tag}", "name": "proj"}]}))["ids"]
        labels = (
            await self.post(
                "/labels",
                {
                    "labels": [
                        {"id": f"l-{tag}-{i}", "projectId": project, "dataRowId": d} for i, d in enumerate(dr["ids"])
                    ]
                },
            )
        )["ids"]
        (run,) = (await self.post("/model-runs", {"modelRuns": [{"name": f"run-{tag}", "modelId": "m1"}]}))["ids"]
        return {"tag": tag, "dataRows": dr["ids"], "project": project, "labels": labels, "run": run}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[LocalLabelbox]:
    async with LocalLabelbox(str(tmp_path / "lb.sqlite3"), api_keys=[API_KEY], admin_token=ADMIN) as srv:
        yield srv


@pytest.fixture
async def admin(server: LocalLabelbox) -> AsyncIterator[Admin]:
    async with aiohttp.ClientSession() as s:
        yield Admin(server, s)


def U(name: str) -> str:
    """A UUID per name: row uuids must be UUIDs (Labelbox fails any other)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def client(server: LocalLabelbox, key: str = API_KEY) -> labelbox.Client:
    return labelbox.Client(api_key=key, endpoint=server.url)


async def test_get_model_run_and_missing(server: LocalLabelbox, admin: Admin) -> None:
    w = await admin.seed_world()
    c = client(server)
    mr = await asyncio.to_thread(c.get_model_run, w["run"])
    assert mr.uid == w["run"] and mr.name == f"run-{w['tag']}" and mr.model_id == "m1"
    assert mr.created_at is not None
    with pytest.raises(lbx.ResourceNotFoundError):
        await asyncio.to_thread(c.get_model_run, "nope")


async def test_upsert_labels_by_ids_and_project(server: LocalLabelbox, admin: Admin) -> None:
    w = await admin.seed_world(4)
    c = client(server)
    mr = await asyncio.to_thread(c.get_model_run, w["run"])
    assert await asyncio.to_thread(mr.upsert_labels, label_ids=w["labels"][:2]) is True
    rows = await admin.get(f"/model-runs/{w['run']}/data-rows")
    assert [(r["dataRowId"], r["labelId"]) for r in rows] == list(zip(w["dataRows"][:2], w["labels"][:2], strict=True))
    assert await asyncio.to_thread(mr.upsert_labels, project_id=w["project"]) is True
    rows = await admin.get(f"/model-runs/{w['run']}/data-rows")
    assert sorted(r["dataRowId"] for r in rows) == sorted(w["dataRows"])
    # unknown label: the task ends FAILED, which the SDK turns into "Job failed."
    with pytest.raises(Exception, match="Job failed"):
        await asyncio.to_thread(mr.upsert_labels, label_ids=["no-such-label"])


async def test_upsert_data_rows_by_ids_and_global_keys(server: LocalLabelbox, admin: Admin) -> None:
    w = await admin.seed_world(4)
    c = client(server)
    mr = await asyncio.to_thread(c.get_model_run, w["run"])
    assert await asyncio.to_thread(mr.upsert_data_rows, data_row_ids=w["dataRows"][:2]) is True
    assert await asyncio.to_thread(mr.upsert_data_rows, global_keys=[f"gk-{w['tag']}-2", f"gk-{w['tag']}-0"]) is True
    counts = await admin.get(f"/model-runs/{w['run']}/counts")
    assert counts["dataRows"] == 3
    # model_run_data_rows paginates with cursors (page size 100 by default in the SDK)
    got = await asyncio.to_thread(lambda: [r.data_row().uid for r in mr.model_run_data_rows()])
    assert got == [w["dataRows"][0], w["dataRows"][1], w["dataRows"][2]]


async def test_model_run_data_rows_pagination(server: LocalLabelbox, admin: Admin) -> None:
    tag = uuid.uuid4().hex[:6]
    ids = (await admin.post("/data-rows", {"dataRows": [{"id": f"p{tag}-{i:04d}"} for i in range(230)]}))["ids"]
    (run,) = (await admin.post("/model-runs", {"modelRuns": [{"name": "pg", "dataRowIds": ids}]}))["ids"]
    mr = await asyncio.to_thread(client(server).get_model_run, run)
    got = await asyncio.to_thread(lambda: [r.data_row().uid for r in mr.model_run_data_rows()])
    assert got == ids


def _prediction_rows(dr: list[str], tag: str) -> list[dict[str, Any]]:
    return [
        {
            "uuid": U(f"{tag}-box-0"),
            "name": "car",
            "dataRow": {"id": dr[0]},
            "bbox": {"top": 1, "left": 2, "height": 3, "width": 4},
            "confidence": 0.9,
            "customMetrics": [{"name": "iou", "value": 0.5}],
        },
        {
            "uuid": U(f"{tag}-box-1"),
            "name": "car",
            "dataRow": {"globalKey": f"gk-{tag}-1"},
            "bbox": {"top": 1, "left": 2, "height": 3, "width": 4},
            "customMetrics": [{"name": "iou", "value": 0.7}],
        },
        {"dataRow": {"id": dr[0]}, "metricValue": 0.25, "metricName": "custom_iou", "featureName": "car",
         "aggregation": "ARITHMETIC_MEAN"},
        {"dataRow": {"id": dr[1]}, "metricValue": [1, 2, 3, 4], "metricName": "50pct_iou", "featureName": "car",
         "aggregation": "CONFUSION_MATRIX"},
        # not in the run
        {"uuid": U(f"{tag}-box-x"), "name": "car", "dataRow": {"id": dr[3]}, "bbox": {"top": 1, "left": 2, "height": 3,
         "width": 4}},
        # invalid metric: a confusion matrix needs 4 counts
        {"dataRow": {"id": dr[1]}, "metricValue": [1, 2, 3], "metricName": "bad", "aggregation": "CONFUSION_MATRIX"},
        # customMetrics on a raster mask
        {"uuid": U(f"{tag}-mask"), "name": "seg", "dataRow": {"id": dr[0]},
         "mask": {"png": "iVBORw0KGgo="}, "customMetrics": [{"name": "iou", "value": 0.1}]},
    ]


async def _check_import(imp: MEAPredictionImport, admin: Admin, w: dict[str, Any]) -> None:
    await asyncio.to_thread(imp.wait_till_done, 0.05)
    assert imp.state.value == "FINISHED"
    statuses = await asyncio.to_thread(lambda: imp.statuses)
    errors = await asyncio.to_thread(lambda: imp.errors)
    assert len(statuses) == 7
    assert [s["status"] for s in statuses] == ["SUCCESS"] * 4 + ["FAILURE"] * 3
    assert errors == statuses[4:]
    tag, dr = w["tag"], w["dataRows"]
    assert statuses[1]["dataRow"] == {"id": dr[1]}  # global key resolved
    assert errors[0]["errors"][0]["name"] == "DataRowNotInModelRun" and dr[3] in errors[0]["errors"][0]["message"]
    assert "metricValue" in errors[1]["errors"][0]["message"]
    assert "mask" in errors[2]["errors"][0]["message"]
    preds = await admin.get(f"/model-runs/{w['run']}/predictions")
    assert sorted(p["uuid"] for p in preds) == sorted([U(f"{tag}-box-0"), U(f"{tag}-box-1")])
    assert {p["uuid"]: p["row"]["customMetrics"][0]["value"] for p in preds}[U(f"{tag}-box-1")] == 0.7
    metrics = await admin.get(f"/model-runs/{w['run']}/metrics")
    assert [(m["dataRowId"], m["metricName"], m["metricValue"]) for m in metrics] == [
        (dr[0], "custom_iou", 0.25),
        (dr[1], "50pct_iou", [1, 2, 3, 4]),
    ]
    inputs = await asyncio.to_thread(lambda: imp.inputs)
    assert len(inputs) == 7


async def test_add_predictions_from_objects(server: LocalLabelbox, admin: Admin) -> None:
    w = await admin.seed_world(4)
    mr = await asyncio.to_thread(client(server).get_model_run, w["run"])
    await asyncio.to_thread(mr.upsert_data_rows, data_row_ids=w["dataRows"][:3])
    imp = await asyncio.to_thread(mr.add_predictions, "objs", _prediction_rows(w["dataRows"], w["tag"]))
    assert imp.state.value == "RUNNING" and imp.status_file_url is None and imp.input_file_url
    await _check_import(imp, admin, w)
    # same name again in the same run is a conflict
    with pytest.raises(lbx.ResourceConflict):
        await asyncio.to_thread(mr.add_predictions, "objs", _prediction_rows(w["dataRows"], w["tag"]))
    # metric upsert by key, prediction upsert by uuid
    again = [
        {"dataRow": {"id": w["dataRows"][0]}, "metricValue": 0.75, "metricName": "custom_iou", "featureName": "car"},
        {**_prediction_rows(w["dataRows"], w["tag"])[0], "confidence": 0.1},
    ]
    imp2 = await asyncio.to_thread(mr.add_predictions, "again", again)
    await asyncio.to_thread(imp2.wait_till_done, 0.05)
    counts = await admin.get(f"/model-runs/{w['run']}/counts")
    assert (counts["predictions"], counts["metrics"]) == (2, 2)
    metrics = await admin.get(f"/model-runs/{w['run']}/metrics")
    assert metrics[0]["metricValue"] == 0.75
    preds = {p["uuid"]: p["row"] for p in await admin.get(f"/model-runs/{w['run']}/predictions")}
    assert preds[U(f"{w['tag']}-box-0")]["confidence"] == 0.1


async def test_add_predictions_from_file_and_url(server: LocalLabelbox, admin: Admin, tmp_path: Path) -> None:
    w = await admin.seed_world(4)
    mr = await asyncio.to_thread(client(server).get_model_run, w["run"])
    await asyncio.to_thread(mr.upsert_labels, label_ids=w["labels"][:3])
    path = tmp_path / "preds.ndjson"
    path.write_text("\n".join(json.dumps(r) for r in _prediction_rows(w["dataRows"], w["tag"])))
    imp = await asyncio.to_thread(mr.add_predictions, "file", path)
    await _check_import(imp, admin, w)
    # by URL: the server fetches fileUrl (here: the input file the previous import stored)
    imp2 = await asyncio.to_thread(mr.add_predictions, "url", imp.input_file_url)
    await asyncio.to_thread(imp2.wait_till_done, 0.05)
    assert imp2.state.value == "FINISHED"
    assert len(await asyncio.to_thread(lambda: imp2.statuses)) == 7
    found = await asyncio.to_thread(MEAPredictionImport.from_name, client(server), w["run"], "url")
    assert found.uid == imp2.uid


async def test_annotation_limit_per_data_row(server: LocalLabelbox, admin: Admin) -> None:
    w = await admin.seed_world(2)
    await admin.post("/model-runs", {"modelRuns": [{"id": w["run"], "name": "r", "dataRowIds": w["dataRows"]}]})
    box = {"top": 1, "left": 2, "height": 3, "width": 4}
    rows = [{"uuid": U(f"a{i}"), "name": "car", "dataRow": {"id": w["dataRows"][0]}, "bbox": box} for i in range(5001)]
    rows.append({"uuid": str(uuid.uuid4()), "name": "car", "dataRow": {"id": w["dataRows"][1]}, "bbox": box})
    payload = "\n".join(json.dumps(r) for r in rows).encode()
    mr = await asyncio.to_thread(client(server).get_model_run, w["run"])
    imp = await asyncio.to_thread(
        MEAPredictionImport._create_mea_import_from_bytes, mr.client, w["run"], "big", payload, len(payload)
    )
    await asyncio.to_thread(imp.wait_till_done, 0.05)
    statuses = await asyncio.to_thread(lambda: imp.statuses)
    assert statuses[-1]["status"] == "SUCCESS"
    assert {s["status"] for s in statuses[:-1]} == {"FAILURE"}
    assert statuses[0]["errors"][0]["name"] == "AnnotationLimitExceeded"
    assert (await admin.get(f"/model-runs/{w['run']}/counts"))["predictions"] == 1


async def test_persistence_across_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "persist.sqlite3")
    async with LocalLabelbox(db, api_keys=[API_KEY], admin_token=ADMIN) as srv, aiohttp.ClientSession() as s:
        adm = Admin(srv, s)
        w = await adm.seed_world(3)
        mr = await asyncio.to_thread(client(srv).get_model_run, w["run"])
        await asyncio.to_thread(mr.upsert_labels, project_id=w["project"])
        imp = await asyncio.to_thread(mr.add_predictions, "p", _prediction_rows(w["dataRows"] + ["x"], w["tag"]))
        await asyncio.to_thread(imp.wait_till_done, 0.05)
        before = await adm.get(f"/model-runs/{w['run']}/counts")
        preds_before = await adm.get(f"/model-runs/{w['run']}/predictions")
    async with LocalLabelbox(db, api_keys=[API_KEY], admin_token=ADMIN) as srv, aiohttp.ClientSession() as s:
        adm = Admin(srv, s)
        assert await adm.get(f"/model-runs/{w['run']}/counts") == before
        assert await adm.get(f"/model-runs/{w['run']}/predictions") == preds_before
        found = await asyncio.to_thread(MEAPredictionImport.from_name, client(srv), w["run"], "p")
        assert found.state.value == "FINISHED"
        assert len(await asyncio.to_thread(lambda: found.statuses)) == 7


async def test_assign_data_rows_to_split_on_the_experimental_endpoint(server: LocalLabelbox, admin: Admin) -> None:
    w = await admin.seed_world(4)
    c = labelbox.Client(api_key=API_KEY, endpoint=server.url, enable_experimental=True)
    mr = await asyncio.to_thread(c.get_model_run, w["run"])
    await asyncio.to_thread(mr.upsert_data_rows, data_row_ids=w["dataRows"][:3])

    def splits() -> dict[str, str]:
        return {r.data_row().uid: r.data_split.value for r in mr.model_run_data_rows()}

    assert set((await asyncio.to_thread(splits)).values()) == {"UNASSIGNED"}
    assert await asyncio.to_thread(mr.assign_data_rows_to_split, w["dataRows"][:2], DataSplit.TRAINING) is True
    keys = [f"gk-{w['tag']}-2"]
    assert await asyncio.to_thread(lambda: mr.assign_data_rows_to_split(split="VALIDATION", global_keys=keys))
    assert await asyncio.to_thread(splits) == {
        w["dataRows"][0]: "TRAINING", w["dataRows"][1]: "TRAINING", w["dataRows"][2]: "VALIDATION"
    }
    for split in ["TEST", *DataSplit]:
        await asyncio.to_thread(mr.assign_data_rows_to_split, w["dataRows"][:3], split)
        want = split.value if isinstance(split, DataSplit) else split
        assert set((await asyncio.to_thread(splits)).values()) == {want}
    # a data row that is not in the run: the task fails, nothing changes
    with pytest.raises(Exception, match="Job failed"):
        await asyncio.to_thread(mr.assign_data_rows_to_split, [w["dataRows"][0], w["dataRows"][3]], "TEST")
    assert set((await asyncio.to_thread(splits)).values()) == {"UNASSIGNED"}
    with pytest.raises(ValueError):  # the SDK's own check
        await asyncio.to_thread(mr.assign_data_rows_to_split, w["dataRows"][:1], "INVALID SPLIT")


async def test_training_metadata_config(server: LocalLabelbox, admin: Admin) -> None:
    w = await admin.seed_world(1)
    c = client(server)
    model = Model(c, {"id": "m1", "name": "model", "ontologyId": "o1", "createdAt": None, "createdBy": None})
    mr = await asyncio.to_thread(model.create_model_run, f"cfg-{w['tag']}", {"batch_size": 100, "reruns": None})
    # Labelbox camel-cases the config's keys on creation
    assert mr.training_metadata == {"batchSize": 100, "reruns": None}
    assert await asyncio.to_thread(mr.get_config) == {"batchSize": 100, "reruns": None}
    res = await asyncio.to_thread(mr.update_config, {"batch_size": 2000, "lr": 0.1})
    assert res["trainingMetadata"]["batch_size"] == 2000  # update keeps the keys as given
    got = await asyncio.to_thread(mr.get_config)
    assert got == {"batchSize": 100, "reruns": None, "batch_size": 2000, "lr": 0.1}
    assert (await asyncio.to_thread(mr.reset_config))["trainingMetadata"] is None
    assert await asyncio.to_thread(mr.get_config) is None
    fetched = await asyncio.to_thread(c.get_model_run, mr.uid)
    assert fetched.training_metadata is None
    no_config = await asyncio.to_thread(model.create_model_run, f"plain-{w['tag']}")
    assert no_config.training_metadata is None


async def test_delete_model_run_data_rows(server: LocalLabelbox, admin: Admin) -> None:
    w = await admin.seed_world(3)
    mr = await asyncio.to_thread(client(server).get_model_run, w["run"])
    await asyncio.to_thread(mr.upsert_labels, project_id=w["project"])
    dr = w["dataRows"]
    rows = [
        {"uuid": U(f"{w['tag']}-d0"), "name": "car", "dataRow": {"id": dr[0]}, "point": {"x": 1, "y": 1}},
        {"uuid": U(f"{w['tag']}-d1"), "name": "car", "dataRow": {"id": dr[1]}, "point": {"x": 1, "y": 1}},
        {"dataRow": {"id": dr[0]}, "metricValue": 0.5, "metricName": "m"},
    ]
    imp = await asyncio.to_thread(mr.add_predictions, "before-delete", rows)
    await asyncio.to_thread(imp.wait_till_done, 0.05)
    before = await asyncio.to_thread(lambda: list(mr.model_run_data_rows()))
    assert len(before) == 3
    assert await asyncio.to_thread(mr.delete_model_run_data_rows, data_row_ids=[dr[0], "not-in-run"]) is None
    after = await asyncio.to_thread(lambda: [r.data_row().uid for r in mr.model_run_data_rows()])
    assert after == [dr[1], dr[2]]
    counts = await admin.get(f"/model-runs/{w['run']}/counts")
    assert (counts["dataRows"], counts["predictions"], counts["metrics"]) == (2, 1, 0)


async def test_uuids_repeated_or_malformed_within_one_import_fail(server: LocalLabelbox, admin: Admin) -> None:
    w = await admin.seed_world(2)
    mr = await asyncio.to_thread(client(server).get_model_run, w["run"])
    await asyncio.to_thread(mr.upsert_data_rows, data_row_ids=w["dataRows"])
    u = U(f"{w['tag']}-twice")
    row = {"uuid": u, "name": "car", "dataRow": {"id": w["dataRows"][0]}, "point": {"x": 1, "y": 1}}
    rows = [row, {**row, "point": {"x": 9, "y": 9}}, {**row, "uuid": "not-a-uuid"}]
    imp = await asyncio.to_thread(mr.add_predictions, "dups", rows)
    await asyncio.to_thread(imp.wait_till_done, 0.05)
    statuses = await asyncio.to_thread(lambda: imp.statuses)
    assert [s["status"] for s in statuses] == ["SUCCESS", "FAILURE", "FAILURE"]
    assert statuses[1]["uuid"] == u and statuses[1]["errors"][0]["name"] == "DuplicateUuid"
    assert statuses[2]["errors"][0]["name"] == "InvalidUuid" and "not-a-uuid" in statuses[2]["errors"][0]["message"]
    (stored,) = await admin.get(f"/model-runs/{w['run']}/predictions")
    assert stored["uuid"] == u and stored["row"]["point"] == {"x": 1, "y": 1}


async def test_delete_model_run(server: LocalLabelbox, admin: Admin) -> None:
    w = await admin.seed_world(2)
    c = client(server)
    mr = await asyncio.to_thread(c.get_model_run, w["run"])
    await asyncio.to_thread(mr.upsert_labels, label_ids=w["labels"])
    row = {"uuid": U(f"{w['tag']}-del"), "name": "car", "dataRow": {"id": w["dataRows"][0]}, "point": {"x": 1, "y": 1}}
    imp = await asyncio.to_thread(mr.add_predictions, "to-delete", [row])
    await asyncio.to_thread(imp.wait_till_done, 0.05)
    input_url = imp.input_file_url
    assert await asyncio.to_thread(mr.delete) is None
    with pytest.raises(lbx.ResourceNotFoundError):
        await asyncio.to_thread(c.get_model_run, w["run"])
    async with admin.s.get(f"{admin.base}/model-runs/{w['run']}/counts", headers=admin.h) as r:
        assert r.status == 404
    counts = await server.db(server.store.counts, w["run"])
    assert counts == {"dataRows": 0, "predictions": 0, "metrics": 0, "imports": 0}
    async with admin.s.get(input_url) as r:
        assert r.status == 404  # the import's files went with it
    # the data rows and labels stay: a new run can take them
    (again,) = (await admin.post("/model-runs", {"modelRuns": [{"name": "again", "dataRowIds": w["dataRows"]}]}))["ids"]
    assert (await admin.get(f"/model-runs/{again}/counts"))["dataRows"] == 2
