"""Benchmark: ``runstream backfill`` rate vs a raw aiokafka produce loop (target >= 100,000 events/s).

Generates an event file (default 500,000 small events: one-row predictions with a customMetric and
one-row scalar metrics, spread over 50 model runs), starts the dev broker (or uses
RUNSTREAM_KAFKA_BOOTSTRAP), and measures on the same messages, side by side:

- raw:       ``await producer.send(topic, value, key=key)`` per message (futures awaited at the end),
             idempotent producer, the lines already in memory and already classified — the usual
             Python ceiling for "just produce these bytes";
- backfill:  ``service.backfill.run_backfill`` end to end: read the file, classify, validate with
             ``service.events.parse_event``, send keyed through the batch sender;
- workers:   the same with ``--workers N`` validation processes (sending stays in the main process);
- dry run:   the same without Kafka (read + validate only), to show what validation costs;
- parse_event alone over the same lines (the validation floor of one process);
- NDJSON:    a Labelbox NDJSON row file (rows spliced into events of 500), rows/s.

Run: .venv/bin/python bench/bench_backfill.py [--events 500000] [--partitions 6] [--json]
(``--json`` also prints one JSON object with every rate as the last line.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from _harness import kafka_bootstrap, scratch_dir
from aiokafka import AIOKafkaProducer

from service.backfill import run_backfill
from service.config import Settings
from service.events import parse_event
from service.kafka import create_topics


def bench_events(n: int, runs: int, seed: int = 7) -> Iterator[tuple[str, str, bytes]]:
    """The workload, one ``(kind, run, JSON line)`` at a time: even events a one-row prediction with a
    customMetric ``iou`` on its own data row (kind ``p``), odd events a one-row ``acc`` metric (``m``)."""
    rnd = random.Random(seed)
    for i in range(n):
        run = f"mr-{i % runs}"
        if i % 2 == 0:
            ev: dict[str, Any] = {
                "model_run_id": run,
                "predictions": [
                    {
                        "dataRow": {"globalKey": f"img-{i}"},
                        "name": "cat",
                        "bbox": {"top": 1, "left": 2, "height": 30, "width": 40},
                        "customMetrics": [{"name": "iou", "value": round(rnd.random(), 4)}],
                    }
                ],
            }
            yield "p", run, orjson.dumps(ev)
        else:
            ev = {
                "model_run_id": run,
                "metrics": [{"data_row": {"id": f"dr-{i}"}, "metric_name": "acc", "value": round(rnd.random(), 4)}],
            }
            yield "m", run, orjson.dumps(ev)


def make_event_file(path: Path, n: int, runs: int, seed: int = 7) -> list[tuple[str, bytes, bytes]]:
    msgs: list[tuple[str, bytes, bytes]] = []
    with path.open("wb") as f:
        for kind, run, line in bench_events(n, runs, seed):
            f.write(line + b"\n")
            msgs.append((kind, run.encode(), line))
    return msgs


def make_ndjson_file(path: Path, n: int) -> None:
    with path.open("wb") as f:
        for i in range(n):
            if i % 2 == 0:
                row = {
                    "dataRow": {"globalKey": f"img-{i}"},
                    "name": "cat",
                    "bbox": {"top": 1, "left": 2, "height": 30, "width": 40},
                    "customMetrics": [{"name": "iou", "value": 0.5}],
                }
            else:
                row = {"dataRow": {"id": f"dr-{i}"}, "metricValue": 0.25, "metricName": "acc"}
            f.write(orjson.dumps(row) + b"\n")


async def raw_produce(settings: Settings, msgs: list[tuple[str, bytes, bytes]]) -> float:
    topics = {"p": settings.topic_predictions, "m": settings.topic_metrics}
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=20,
        max_batch_size=900_000,
    )
    await producer.start()
    try:
        t0 = time.perf_counter()
        futs = []
        for kind, key, value in msgs:
            futs.append(await producer.send(topics[kind], value, key=key))
            if len(futs) >= 50_000:
                await asyncio.gather(*futs)
                futs.clear()
        await asyncio.gather(*futs)
        return time.perf_counter() - t0
    finally:
        await producer.stop()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--ndjson-rows", type=int, default=500_000)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--json", action="store_true", help="also print one JSON object with every rate")
    args = ap.parse_args()

    tmp = scratch_dir("bench-backfill-")
    events_file = tmp / "events.jsonl"
    msgs = make_event_file(events_file, args.events, args.runs)
    rows_file = tmp / "rows.ndjson"
    make_ndjson_file(rows_file, args.ndjson_rows)
    size_mb = events_file.stat().st_size / 1e6
    print(f"event file: {args.events:,} events, {size_mb:.1f} MB; NDJSON file: {args.ndjson_rows:,} rows")

    with kafka_bootstrap(tmp / "kafka") as bootstrap:

        def settings_for(tag: str) -> Settings:
            return Settings(
                kafka_bootstrap=bootstrap,
                topic_predictions=f"bench-{tag}-pred-{os.getpid()}",
                topic_metrics=f"bench-{tag}-met-{os.getpid()}",
                topic_labels=f"bench-{tag}-lab-{os.getpid()}",
            )

        results: dict[str, float] = {}
        for tag in ("raw", "backfill", "workers", "rows"):
            s = settings_for(tag)
            await create_topics(
                bootstrap, [s.topic_predictions, s.topic_metrics, s.topic_labels], partitions=args.partitions
            )

        t = await raw_produce(settings_for("raw"), msgs)
        results["raw"] = args.events / t
        print(f"raw aiokafka send() loop:   {args.events / t:>10,.0f} events/s  ({t:.2f} s)")

        stats = await run_backfill([events_file], settings_for("backfill"))
        assert stats.events == args.events and stats.bad_lines == 0, stats
        results["backfill"] = stats.events_per_s
        print(f"runstream backfill:         {stats.events_per_s:>10,.0f} events/s  ({stats.elapsed_s:.2f} s)")

        wk = await run_backfill([events_file], settings_for("workers"), workers=args.workers)
        assert wk.events == args.events and wk.bad_lines == 0, wk
        results["workers"] = wk.events_per_s
        print(
            f"  with --workers {args.workers}:       {wk.events_per_s:>10,.0f} events/s  ({wk.elapsed_s:.2f} s)"
        )

        dry = await run_backfill([events_file], settings_for("backfill"), dry_run=True)
        results["dry"] = dry.events_per_s
        print(f"  read + validate only:     {dry.events_per_s:>10,.0f} events/s  ({dry.elapsed_s:.2f} s)")

        kinds = {"p": "prediction", "m": "metric"}
        t = time.perf_counter()
        for kind, _, value in msgs:
            parse_event(kinds[kind], value, max_bytes=1 << 20)  # type: ignore[arg-type]
        pe = args.events / (time.perf_counter() - t)
        results["parse_event"] = pe
        print(f"  parse_event alone:        {pe:>10,.0f} events/s  ({1e6 / pe:.1f} µs/event)")

        rows = await run_backfill([rows_file], settings_for("rows"), model_run="mr-rows")
        rows_per_s = rows.rows / rows.elapsed_s
        results["ndjson_rows"] = rows_per_s
        print(
            f"NDJSON rows (500/event):    {rows_per_s:>10,.0f} rows/s    ({rows.elapsed_s:.2f} s, "
            f"{rows.events:,} events)"
        )
        print(
            f"ratio backfill / raw: {results['backfill'] / results['raw']:.2f}; "
            f"with workers / raw: {results['workers'] / results['raw']:.2f}  "
            f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
        )
        if args.json:
            summary = {
                "events": args.events,
                "runs": args.runs,
                "partitions": args.partitions,
                "workers": args.workers,
                "ndjson_rows_in_file": args.ndjson_rows,
                "event_file_mb": size_mb,
                **{f"{k}_per_s": v for k, v in results.items()},
                "ratio_backfill_to_raw": results["backfill"] / results["raw"],
                "ratio_workers_to_raw": results["workers"] / results["raw"],
            }
            print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(main())
