"""Benchmark: event parsing (``service.events``) vs ``orjson.loads`` alone, side by side in one run.

Cases (each timed as ``calls/s``, best of ``--repeat`` rounds of ``--seconds`` each, interleaved so that
load on a noisy machine hits every case alike):

- ``orjson.loads``           decode of the 1-row prediction event: the ceiling for any parser;
- ``prediction 1 row``       ``parse_event("prediction", ...)``: bbox + customMetrics, no uuid (deterministic uuid);
- ``prediction 10 rows``     the same event with 10 rows;
- ``upload prediction 1 row`` ``parse_upload("prediction", ...)``: the uploader's path, same checks, NDJSON bytes out;
- ``metric 3 rows``          ``parse_event("metric", ...)``: snake_case scalar, camelCase scalar, confusion matrix;
- ``label``                  ``parse_event("label", ...)`` with 3 data row ids;
- ``ndjson prediction row``  ``parse_ndjson_row`` on an already-decoded prediction row (with uuid, as SDKs send);
- ``ndjson metric row``      ``parse_ndjson_row`` on an already-decoded camelCase scalar metric row.

Each line prints calls/s and the ratio to ``orjson.loads`` measured in the same run.

Run: .venv/bin/python bench/bench_events.py [--seconds 0.5] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import orjson

from service.events import parse_event, parse_ndjson_row, parse_upload

MAX = 1_048_576


def pred_row(i: int) -> dict[str, Any]:
    return {
        "dataRow": {"globalKey": f"img-{i}"},
        "name": "cat",
        "bbox": {"top": 1 + i, "left": 2, "height": 30, "width": 40},
        "confidence": 0.75,
        "customMetrics": [{"name": "iou", "value": 0.61}, {"name": "area", "value": 120.0}],
    }


def cases() -> list[tuple[str, Callable[[], object]]]:
    pred1 = orjson.dumps({"model_run_id": "mr-1", "predictions": [pred_row(0)]})
    pred10 = orjson.dumps({"model_run_id": "mr-1", "predictions": [pred_row(i) for i in range(10)]})
    metric3 = orjson.dumps(
        {
            "model_run_id": "mr-1",
            "metrics": [
                {"data_row": {"id": "dr-1"}, "metric_name": "acc", "value": 0.5},
                {"dataRow": {"id": "dr-1"}, "metricName": "box_iou", "featureName": "cat", "metricValue": 0.42},
                {"dataRow": {"id": "dr-1"}, "metricName": "50pct_iou", "metricValue": [1, 2, 3, 4]},
            ],
        }
    )
    label = orjson.dumps({"model_run_id": "mr-1", "data_row_ids": ["dr-1", "dr-2", "dr-3"]})
    nd_pred = {**pred_row(0), "uuid": "0b9e4a0c-3f5e-4d3a-9c57-7e1c2a9b1f10", "dataRow": {"id": "dr-1"}}
    nd_metric = {
        "dataRow": {"id": "dr-1"},
        "metricValue": 0.42,
        "metricName": "custom_iou",
        "featureName": "cat",
        "aggregation": "ARITHMETIC_MEAN",
    }
    loads = orjson.loads
    return [
        ("orjson.loads", lambda: loads(pred1)),
        ("prediction 1 row", lambda: parse_event("prediction", pred1, max_bytes=MAX)),
        ("prediction 10 rows", lambda: parse_event("prediction", pred10, max_bytes=MAX)),
        ("upload prediction 1 row", lambda: parse_upload("prediction", pred1, max_bytes=MAX)),
        ("metric 3 rows", lambda: parse_event("metric", metric3, max_bytes=MAX)),
        ("label", lambda: parse_event("label", label, max_bytes=MAX)),
        ("ndjson prediction row", lambda: parse_ndjson_row(nd_pred, model_run_id="mr-1")),
        ("ndjson metric row", lambda: parse_ndjson_row(nd_metric, model_run_id="mr-1")),
    ]


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (batches of 1,000 calls)."""
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(1000):
            fn()
        n += 1000
        t = time.perf_counter()
        if t >= deadline:
            return n / (t - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=0.5, help="length of one timed round per case")
    ap.add_argument("--repeat", type=int, default=5, help="rounds per case; the best round counts")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()

    all_cases = cases()
    for _, fn in all_cases:  # warm up (and fail early if a case does not parse)
        fn()
    best = {name: 0.0 for name, _ in all_cases}
    for _ in range(args.repeat):
        for name, fn in all_cases:
            best[name] = max(best[name], rate(fn, args.seconds))
    ceiling = best["orjson.loads"]
    results = [
        {"case": name, "callsPerSecond": round(r), "ratioToOrjsonLoads": round(r / ceiling, 3)}
        for name, r in best.items()
    ]
    command = f".venv/bin/python bench/bench_events.py --seconds {args.seconds} --repeat {args.repeat}"
    if args.json:
        print(json.dumps({"results": results, "command": command}, indent=2))
        return
    print(f"{'case':<24}{'calls/s':>12}{'x orjson.loads':>16}")
    for r in results:
        print(f"{r['case']:<24}{r['callsPerSecond']:>12,}{r['ratioToOrjsonLoads']:>16.3f}")
    print(f"command: {command}")


if __name__ == "__main__":
    main()
