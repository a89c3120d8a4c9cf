"""Benchmark: import rate of the local Labelbox API (target >= 100,000 rows/s for 50,000 rows).

Starts the server on a temp SQLite file, seeds a model run with data rows, uploads a
50,000-row NDJSON (predictions with customMetrics + scalar and confusion-matrix metric rows)
as a GraphQL multipart request over a real socket, polls until FINISHED, and prints:
- server-side processing rate (import record started_at -> finished_at: parse + validate + persist),
- end-to-end rate (upload start -> FINISHED observed by polling),
- CPU per row: of the server's DB thread (where every import is parsed, validated and persisted)
  from upload start to FINISHED, and of the whole process in that window (server + this client),
- the share spent in service.events.parse_ndjson_row (measured separately on the same rows).

With --uploader-like, the load the uploader benchmark puts on the API instead: 12 model runs,
imports of 5,000 prediction rows (uuid + one customMetric, as the uploader sends them), 4 in
flight, each polled with backoff and its status file fetched, while a poller reads /admin counts
of all 12 runs every 50 ms (as bench/bench_uploader.py does); reports rows/s and CPU per row.

Run: .venv/bin/python bench/bench_local_labelbox.py [--rows 50000] [--data-rows 1000] [--uploader-like]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from _harness import scratch_dir

from devstack.local_labelbox import LocalLabelbox
from service.events import parse_ndjson_row

MUTATION = (
    "mutation createMEAPredictionImportByFilePyApi($modelRunId : ID!, $name: String!, $file: Upload!, "
    "$contentLength: Int!) { createModelErrorAnalysisPredictionImport(data: { modelRunId: $modelRunId "
    "name: $name filePayload: { file: $file, contentLength: $contentLength} }) "
    "{errorFileUrl inputFileUrl modelRunId name progress state statusFileUrl id} }"
)
POLL = (
    "query q($modelRunId : ID!, $name: String!) { modelErrorAnalysisPredictionImport("
    "where: {modelRunId: $modelRunId, name: $name}) {state statusFileUrl} }"
)


def make_rows(n: int, data_rows: list[str]) -> list[dict[str, Any]]:
    """Half predictions with customMetrics, a quarter scalar metrics, a quarter confusion matrices."""
    rows: list[dict[str, Any]] = []
    for i in range(n):
        dr = data_rows[i % len(data_rows)]
        k = i % 4
        if k in (0, 1):
            rows.append(
                {
                    "uuid": f"00000000-0000-4000-8000-{i:012x}",
                    "name": f"class-{i % 7}",
                    "dataRow": {"id": dr},
                    "bbox": {"top": i % 100, "left": 3, "height": 10, "width": 12},
                    "confidence": 0.5,
                    "customMetrics": [{"name": "iou", "value": 0.61}, {"name": "area", "value": 120.0}],
                }
            )
        elif k == 2:
            rows.append(
                {
                    "dataRow": {"id": dr},
                    "metricValue": 0.42,
                    "metricName": f"custom_iou_{i % 13}",
                    "featureName": f"class-{i % 7}",
                    "aggregation": "ARITHMETIC_MEAN",
                }
            )
        else:
            rows.append(
                {
                    "dataRow": {"id": dr},
                    "metricValue": [1, 2, 3, 4],
                    "metricName": f"cm_{i % 11}",
                    "featureName": f"class-{i % 5}",
                    "subclassName": "s",
                    "aggregation": "CONFUSION_MATRIX",
                }
            )
    return rows


async def seed(
    http: aiohttp.ClientSession, admin_url: str, admin_h: dict[str, str], n_data_rows: int, runs: list[str]
) -> list[str]:
    """Register n data rows and the model runs (each holding all of them) through the admin API."""
    dr_ids = [f"dr-{i:06d}" for i in range(n_data_rows)]
    data_rows = {"dataRows": [{"id": d} for d in dr_ids]}
    async with http.post(admin_url + "/data-rows", json=data_rows, headers=admin_h) as r:
        assert r.status == 200
    model_runs = [{"id": x, "name": x, "dataRowIds": dr_ids} for x in runs]
    async with http.post(admin_url + "/model-runs", json={"modelRuns": model_runs}, headers=admin_h) as r:
        assert r.status == 200
    return dr_ids


async def run(n_rows: int, n_data_rows: int) -> dict[str, Any]:
    tmp = scratch_dir("bench-llb-")
    admin_h = {"Authorization": "Bearer adm"}
    async with (
        LocalLabelbox(str(Path(tmp) / "b.sqlite3"), api_keys=["k"], admin_token="adm") as srv,
        aiohttp.ClientSession() as http,
    ):
        dr_ids = await seed(http, srv.admin_url, admin_h, n_data_rows, ["bench-run"])
        rows = make_rows(n_rows, dr_ids)
        payload = "\n".join(json.dumps(r) for r in rows).encode()  # SDK-style json.dumps lines

        name = "bench-import"
        form = aiohttp.FormData()
        form.add_field(
            "operations",
            json.dumps(
                {
                    "query": MUTATION,
                    "variables": {"file": None, "contentLength": len(payload), "modelRunId": "bench-run", "name": name},
                }
            ),
        )
        form.add_field("map", json.dumps({"f.ndjson": ["variables.file"]}))
        form.add_field("f.ndjson", payload, filename="f.ndjson", content_type="application/x-ndjson")
        db_clock = time.pthread_getcpuclockid(await srv.db(threading.get_ident))
        db_cpu0 = time.clock_gettime(db_clock)
        proc_cpu0 = _process_cpu()
        t0 = time.perf_counter()
        async with http.post(srv.url, data=form, headers={"Authorization": "Bearer k"}) as r:
            body = await r.json()
        assert r.status == 200, body
        import_id = body["data"]["createModelErrorAnalysisPredictionImport"]["id"]
        while True:
            async with http.post(
                srv.url,
                json={"query": POLL, "variables": {"modelRunId": "bench-run", "name": name}},
                headers={"Authorization": "Bearer k"},
            ) as r:
                state = (await r.json())["data"]["modelErrorAnalysisPredictionImport"]["state"]
            if state != "RUNNING":
                break
            await asyncio.sleep(0.01)
        e2e = time.perf_counter() - t0
        db_cpu = time.clock_gettime(db_clock) - db_cpu0
        proc_cpu = _process_cpu() - proc_cpu0
        async with http.get(f"{srv.admin_url}/imports/{import_id}", headers=admin_h) as r:
            rec = await r.json()
        async with http.get(f"{srv.admin_url}/model-runs/bench-run/counts", headers=admin_h) as r:
            counts = await r.json()

    # Validation cost alone, on the same rows (what parse_ndjson_row contributes).
    dicts = [orjson.loads(line) for line in payload.split(b"\n")]
    t1 = time.perf_counter()
    for d in dicts:
        parse_ndjson_row(d, model_run_id="bench-run")
    parse_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    for line in payload.split(b"\n"):
        orjson.loads(line)
    loads_s = time.perf_counter() - t2

    server_s = rec["processingSeconds"]
    return {
        "rows": n_rows,
        "state": state,
        "failureRows": rec["failureRows"],
        "stored": counts,
        "payloadBytes": len(payload),
        "serverProcessingSeconds": round(server_s, 4),
        "serverRowsPerSecond": round(n_rows / server_s),
        "endToEndSeconds": round(e2e, 4),
        "endToEndRowsPerSecond": round(n_rows / e2e),
        "dbThreadCpuMicrosPerRow": round(db_cpu / n_rows * 1e6, 2),
        "processCpuMicrosPerRow(server + client)": round(proc_cpu / n_rows * 1e6, 2),
        "parseNdjsonRowSeconds": round(parse_s, 4),
        "parseNdjsonRowRowsPerSecond": round(n_rows / parse_s),
        "orjsonLoadsSeconds": round(loads_s, 4),
        "ownShareSeconds(server - parse_ndjson_row)": round(server_s - parse_s, 4),
        "command": f".venv/bin/python bench/bench_local_labelbox.py --rows {n_rows} --data-rows {n_data_rows}",
    }


UPLOADER_RUNS = [f"bench-run-{i}" for i in range(12)]
UPLOADER_BATCH = 5000


def _uploader_rows(run: str, k: int, data_rows: list[str]) -> bytes:
    rows = [
        {
            "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{run}-{k}-{i}")),
            "dataRow": {"id": data_rows[i % len(data_rows)]},
            "name": "car",
            "confidence": 0.8,
            "bbox": {"top": i % 500, "left": i % 300, "height": 40, "width": 60 + i},
            "customMetrics": [{"name": "iou", "value": 0.5}],
        }
        for i in range(UPLOADER_BATCH)
    ]
    return "\n".join(json.dumps(r) for r in rows).encode()


async def run_uploader_like(n_rows: int, n_data_rows: int) -> dict[str, Any]:
    tmp = scratch_dir("bench-llb-")
    admin_h = {"Authorization": "Bearer adm"}
    key_h = {"Authorization": "Bearer k"}
    async with (
        LocalLabelbox(str(Path(tmp) / "u.sqlite3"), api_keys=["k"], admin_token="adm") as srv,
        aiohttp.ClientSession() as http,
    ):
        dr_ids = await seed(http, srv.admin_url, admin_h, n_data_rows, UPLOADER_RUNS)
        batches = []
        for k in range(max(1, n_rows // UPLOADER_BATCH)):
            run = UPLOADER_RUNS[k % len(UPLOADER_RUNS)]
            batches.append((run, f"imp-{k}", _uploader_rows(run, k, dr_ids)))
        total_rows = len(batches) * UPLOADER_BATCH

        async def counts() -> int:
            total = 0
            for run in UPLOADER_RUNS:
                async with http.get(f"{srv.admin_url}/model-runs/{run}/counts", headers=admin_h) as r:
                    total += int((await r.json())["predictions"])
            return total

        done = asyncio.Event()

        async def poll_counts() -> None:
            while not done.is_set():
                await counts()
                await asyncio.sleep(0.05)

        in_flight = asyncio.Semaphore(4)

        async def one(run: str, name: str, payload: bytes) -> None:
            async with in_flight:
                form = aiohttp.FormData()
                variables = {"file": None, "contentLength": len(payload), "modelRunId": run, "name": name}
                form.add_field("operations", json.dumps({"query": MUTATION, "variables": variables}))
                form.add_field("map", json.dumps({"f.ndjson": ["variables.file"]}))
                form.add_field("f.ndjson", payload, filename="f.ndjson", content_type="application/x-ndjson")
                async with http.post(srv.url, data=form, headers=key_h) as r:
                    assert r.status == 200, await r.text()
                delay = 0.05
                while True:
                    async with http.post(
                        srv.url, json={"query": POLL, "variables": {"modelRunId": run, "name": name}}, headers=key_h
                    ) as r:
                        got = (await r.json())["data"]["modelErrorAnalysisPredictionImport"]
                    if got["state"] != "RUNNING":
                        break
                    await asyncio.sleep(delay)
                    delay = min(1.0, delay * 1.5)
                async with http.get(got["statusFileUrl"]) as r:
                    await r.read()

        db_clock = time.pthread_getcpuclockid(await srv.db(threading.get_ident))
        db_cpu0 = time.clock_gettime(db_clock)
        proc_cpu0 = _process_cpu()
        t0 = time.perf_counter()
        poller = asyncio.create_task(poll_counts())
        await asyncio.gather(*(one(*b) for b in batches))
        done.set()
        await poller
        wall = time.perf_counter() - t0
        db_cpu = time.clock_gettime(db_clock) - db_cpu0
        proc_cpu = _process_cpu() - proc_cpu0
        stored = await counts()
    assert stored == total_rows, (stored, total_rows)
    return {
        "mode": "uploader-like",
        "rows": total_rows,
        "imports": len(batches),
        "stored": stored,
        "seconds": round(wall, 4),
        "rowsPerSecond": round(total_rows / wall),
        "dbThreadCpuMicrosPerRow": round(db_cpu / total_rows * 1e6, 2),
        "processCpuMicrosPerRow(server + client)": round(proc_cpu / total_rows * 1e6, 2),
        "command": f".venv/bin/python bench/bench_local_labelbox.py --uploader-like --rows {n_rows} "
        f"--data-rows {n_data_rows}",
    }


def _process_cpu() -> float:
    """User + system CPU seconds of this process (all threads)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--data-rows", type=int, default=1000)
    ap.add_argument("--uploader-like", action="store_true", help="the uploader benchmark's load instead (see above)")
    args = ap.parse_args()
    if args.uploader_like:
        result = asyncio.run(run_uploader_like(args.rows, args.data_rows))
    else:
        result = asyncio.run(run(args.rows, args.data_rows))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
