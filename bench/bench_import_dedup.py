"""Cost of sending each uuid once per import (service.labelbox.import_dedup.last_versions) on the uploader's path.

Same run, interleaved rounds, medians: the plain join of a batch's payloads (what the uploader did
before) against ``last_versions`` on the same batch without repeated uuids (the usual case) and
with 10% of the rows re-sent as newer versions.

    .venv/bin/python bench/bench_import_dedup.py [--rows 5000] [--rounds 41]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid

import orjson

from service.labelbox.import_dedup import last_versions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=41)
    args = ap.parse_args()
    msgs = []
    for i in range(args.rows):
        u = str(uuid.uuid5(uuid.NAMESPACE_URL, str(i)))
        row = {"uuid": u, "dataRow": {"id": f"dr-{i % 300}"}, "name": "car",
               "bbox": {"top": 1, "left": 2, "height": 3, "width": 4}, "customMetrics": [{"name": "iou", "value": 0.5}]}
        msgs.append(([(u, f"id:dr-{i % 300}")], orjson.dumps(row)))
    repeats = msgs + msgs[: args.rows // 10]
    join: list[float] = []
    plain: list[float] = []
    dup: list[float] = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        b"\n".join(p for _, p in msgs)
        join.append(time.perf_counter() - t)
        t = time.perf_counter()
        last_versions(msgs)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        last_versions(repeats)
        dup.append(time.perf_counter() - t)
    med = statistics.median
    print(json.dumps({
        "rows": args.rows,
        "joinMs": round(med(join) * 1e3, 3),
        "lastVersionsMs": round(med(plain) * 1e3, 3),
        "lastVersions10pctRepeatsMs": round(med(dup) * 1e3, 3),
        "addedUsPerRow": round((med(plain) - med(join)) / args.rows * 1e6, 3),
        "ratioToJoin": round(med(plain) / med(join), 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
