"""Aggregator benchmark: throughput vs. the raw aiokafka drain, query p99 at 1M leaves, RSS.

    .venv/bin/python bench/bench_aggregator.py [--events 300000] [--leaves 1000000]
        [--runs 12] [--data-rows 10000] [--skip-query] [--json]

``--json`` also prints one JSON object (every figure below) as the last line.

Uses RUNSTREAM_KAFKA_BOOTSTRAP when set, else starts the dev broker (devstack.kafka_broker).
1. Pre-produces N realistic metric events to a 6-partition topic: 12 model runs, 10k data
   rows, 1–5 metrics per event over five metric names with fixed aggregations (AM, GM, HM,
   SUM, confusion matrix), data-row / feature / nested-feature granularity, ~10 % confidence-
   keyed values, snake_case and camelCase. Drains it with a plain AIOKafkaConsumer (consume and
   discard), then runs the real Aggregator (SQLite, commit interval 1 s) over the same topic;
   the aggregator's time runs from its first batch until the store's offsets reach the end
   (state durable). Reports both rates and the ratio. The process tunes the GC as the service's
   entry point does (service.gc_tuning.tune_gc; ``--no-gc-tuning`` keeps CPython's defaults).
2. Times ``parse_event`` alone over the same messages (its share of the aggregator's time).
3. In a fresh child process (so RSS is the engine's alone): builds a model run with 1,000,000
   leaf values (1M data rows) through the same engine and store, reports RSS after 10k and 1M
   data rows (bounded cache of hot rows), serves the query API over real HTTP and times
   GET /v1/model-runs/{id}/metrics, a 100-row slice query and a narrow value-filter query.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import inspect
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import kafka_bootstrap, scratch_dir

from consumers.aggregator import Aggregator
from service.aggregation import MessageOps, MetricLeaf, apply_message
from service.api.query_api import build_query_app
from service.config import Settings
from service.events import parse_event
from service.kafka import create_topics
from service.state import CachedState, SqlStateBackend, open_backend


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# metric name → aggregation (a name keeps one aggregation per run); none is a reserved name
BENCH_METRICS = {
    "box_iou": "ARITHMETIC_MEAN",
    "latency_gm": "GEOMETRIC_MEAN",
    "recall_hm": "HARMONIC_MEAN",
    "tp_count": "SUM",
    "det_cm": "CONFUSION_MATRIX",
}
FEATURES = ("cat", "dog", "bird")
SUBCLASSES = ("small", "large")


def bench_event(rng: random.Random, i: int, runs: int = 12, data_rows: int = 10_000) -> tuple[str, bytes]:
    run = f"bench-run-{i % runs}"
    metrics = []
    for _ in range(rng.randint(1, 5)):
        name = rng.choice(list(BENCH_METRICS))
        aggregation = BENCH_METRICS[name]
        camel = rng.random() < 0.5
        g = rng.random()
        feature = None if g < 0.3 else rng.choice(FEATURES)
        subclass = rng.choice(SUBCLASSES) if feature is not None and g > 0.7 else None

        def one(aggregation: str = aggregation) -> Any:
            if aggregation == "CONFUSION_MATRIX":
                return [rng.randint(0, 50) for _ in range(4)]
            return round(rng.uniform(0.01, 1.0), 4)

        value = {str(c): one() for c in (0.25, 0.5, 0.75)} if rng.random() < 0.1 else one()
        dr = f"dr{rng.randrange(data_rows)}"
        row: dict[str, Any] = {
            ("dataRow" if camel else "data_row"): {"id": dr},
            ("metricName" if camel else "metric_name"): name,
            ("metricValue" if camel else "value"): value,
            "aggregation": aggregation,
        }
        if feature is not None:
            row["featureName" if camel else "feature_name"] = feature
        if subclass is not None:
            row["subclassName" if camel else "subclass_name"] = subclass
        metrics.append(row)
    return run, orjson.dumps({"model_run_id": run, "metrics": metrics})


async def produce(bootstrap: str, topic: str, n: int, runs: int = 12, data_rows: int = 10_000) -> list[bytes]:
    rng = random.Random(42)
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=262144, acks=1)
    await p.start()
    values: list[bytes] = []
    try:
        futs = []
        for i in range(n):
            run, value = bench_event(rng, i, runs, data_rows)
            values.append(value)
            futs.append(await p.send(topic, value, key=run.encode()))
            if len(futs) >= 5000:
                await asyncio.gather(*futs)
                futs.clear()
        await asyncio.gather(*futs)
    finally:
        await p.stop()
    return values


def parse_rate(values: list[bytes]) -> float:
    """parse_event alone over the produced messages (events/s, best of 3)."""
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for v in values:
            parse_event("metric", v, max_bytes=1_048_576)
        best = max(best, len(values) / (time.perf_counter() - t0))
    return best


async def end_total(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await c.start()
    try:
        md = await c._client.fetch_all_metadata()
        tps = [TopicPartition(topic, p) for p in md.partitions_for_topic(topic) or ()]
        return dict(await c.end_offsets(tps))
    finally:
        await c.stop()


async def raw_drain(bootstrap: str, topic: str, total: int) -> float:
    c = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"drain-{time.time()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await c.start()
    try:
        seen = 0
        t0 = None
        while seen < total:
            batch = await c.getmany(timeout_ms=500, max_records=5000)
            if t0 is None and batch:
                t0 = time.perf_counter()
            for recs in batch.values():
                seen += len(recs)
        assert t0 is not None
        return total / (time.perf_counter() - t0)
    finally:
        await c.stop()


async def aggregator_rate(
    bootstrap: str, topic: str, ends: dict[TopicPartition, int], tmp: Path
) -> tuple[float, dict[str, float]]:
    settings = Settings(
        kafka_bootstrap=bootstrap,
        topic_metrics=topic,
        topic_predictions=topic + "-unused",
        topic_dlq=topic + "-dlq",
        aggregator_group=f"bench-agg-{time.time()}",
        state_sqlite_path=tmp / "bench-state.sqlite3",
        state_commit_interval_ms=1000,
    )
    await create_topics(bootstrap, [settings.topic_predictions, settings.topic_dlq], partitions=1)
    backend = SqlStateBackend.sqlite(settings.state_sqlite_path)
    stop = asyncio.Event()
    want = {(tp.topic, tp.partition): o for tp, o in ends.items()}
    t_first: list[float] = []
    done = asyncio.Event()
    commits: list[float] = []

    def on_commit() -> None:
        commits.append(time.perf_counter())
        stored = agg.checkpoint.stored
        if all(stored.get(k, 0) >= v for k, v in want.items() if v):
            done.set()

    agg = Aggregator(settings, backend, on_commit=on_commit)
    # the first batch (new engine) or the first message (old one-at-a-time engine) starts the clock
    name = "_process" if hasattr(agg, "_process") else "_handle"
    orig = getattr(agg, name)

    busy = [0.0, 0.0]  # seconds inside the batch step, end of the last batch

    async def timed(*args: object) -> None:
        t = time.perf_counter()
        if not t_first:
            t_first.append(t)
        await orig(*args)
        busy[1] = time.perf_counter()
        busy[0] += busy[1] - t

    # cyclic GC pauses during the run (the service tunes the GC; they are still a share of the time)
    gc_time = [0.0, 0.0]

    def on_gc(phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            gc_time[1] = time.perf_counter()
        elif t_first and not done.is_set():
            gc_time[0] += time.perf_counter() - gc_time[1]

    setattr(agg, name, timed)
    gc.callbacks.append(on_gc)
    task = asyncio.create_task(agg.run(stop))
    try:
        await done.wait()
    finally:
        gc.callbacks.remove(on_gc)
    t_done = time.perf_counter()
    elapsed = t_done - t_first[0]
    stop.set()
    await task
    backend.close()
    gaps = [b - a for a, b in zip([t_first[0], *commits], commits, strict=False)]
    extra = {
        "commits": float(len(commits)),
        "max_commit_gap_s": max(gaps, default=0.0),  # first batch → first commit included
        "median_commit_gap_s": statistics.median(gaps) if gaps else 0.0,
        "rejected": float(agg.stats.rejected),
        "invalid": float(agg.stats.invalid),
        "batch_busy_s": busy[0],  # parse, prefetch, apply (and mid-batch commit starts)
        "tail_s": t_done - busy[1],  # last batch applied → its offsets durable
        "gc_s": gc_time[0],
        "elapsed_s": elapsed,
    }
    return sum(want.values()) / elapsed, extra


async def query_bench(tmp: Path, leaves: int) -> dict[str, float]:
    """Build a run with `leaves` leaf values (one per data row) and time the run-level query."""
    backend = SqlStateBackend.sqlite(tmp / "query-state.sqlite3")
    default_cache = inspect.signature(CachedState).parameters["max_clean"].default
    state = CachedState(backend, max_clean=default_cache)  # the engine's default bound
    run = "big-run"
    out: dict[str, float] = {"cache_entries_bound": float(default_cache), "rss_mb_at_start": rss_mb()}
    t0 = time.perf_counter()
    chunk = 1000
    for start in range(0, leaves, chunk):
        ops = MessageOps(run)
        for i in range(start, min(leaves, start + chunk)):
            f = ("cat", "dog", "bird", "fish")[i % 4]
            ops.metric_rows.append(
                MetricLeaf("box_iou", "ARITHMETIC_MEAN", f"id:dr{i}", f, None, {"": (i % 997) / 997})
            )
        apply_message(state, ops)
        if (start // chunk) % 50 == 49 or start + chunk >= leaves:
            ch = state.take_changes()
            backend.commit(
                "bench",
                ch,
                {("bench", 0): start + chunk},
                {("bench", 0): None if start < 50 * chunk else start + chunk - 50 * chunk},
            )
            state.committed(ch)
        if start + chunk == 10_000:
            out["rss_mb_at_10k_rows"] = rss_mb()
    out["rss_mb_at_1m_rows"] = rss_mb()
    out["build_s"] = time.perf_counter() - t0
    # the query API's own backend, opened as `runstream run` opens it
    api_settings = Settings(state_backend="sqlite", state_sqlite_path=tmp / "query-state.sqlite3")
    api_backend = open_backend(api_settings, queries=True)
    app = build_query_app(api_backend, api_settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    lat: list[float] = []
    slice_lat: list[float] = []
    async with aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{port}/v1/model-runs/{run}/metrics"
        for _ in range(50):
            async with s.get(url) as r:
                await r.read()
        for _ in range(1000):
            t = time.perf_counter()
            async with s.get(url) as r:
                body = await r.read()
                assert r.status == 200
            lat.append(time.perf_counter() - t)
        assert orjson.loads(body)["metrics"][0]["count"] == leaves
        qurl = f"http://127.0.0.1:{port}/v1/model-runs/{run}/metrics/query"
        for k in range(200):
            rows = [f"dr{(k * 7919 + j * 104729) % leaves}" for j in range(100)]
            t = time.perf_counter()
            async with s.post(qurl, json={"data_row_ids": rows}) as r:
                await r.read()
            slice_lat.append(time.perf_counter() - t)
        # a narrow value filter (~0.1 % of the rows match) on the data-row level of the metric
        filter_lat: list[float] = []
        for k in range(10):
            lo = (k * 97 % 997) / 997
            t = time.perf_counter()
            async with s.post(qurl, json={"filter": {"metric": "box_iou", "min": lo, "max": lo + 0.0005}}) as r:
                body = await r.read()
                assert r.status == 200, body
            filter_lat.append(time.perf_counter() - t)
        # the same narrow filter on a feature's value (rs_node_nums, an index range scan)
        feature_lat: list[float] = []
        for k in range(3):
            lo = (k * 97 % 997) / 997
            flt = {"metric": "box_iou", "feature": "cat", "min": lo, "max": lo + 0.0005}
            t = time.perf_counter()
            async with s.post(qurl, json={"filter": flt}) as r:
                body = await r.read()
                assert r.status == 200, body
            feature_lat.append(time.perf_counter() - t)
    await runner.cleanup()
    api_backend.close()
    backend.close()
    lat.sort()
    slice_lat.sort()
    out["run_query_p50_ms"] = statistics.median(lat) * 1000
    out["run_query_p99_ms"] = lat[int(len(lat) * 0.99) - 1] * 1000
    out["slice100_query_p99_ms"] = slice_lat[int(len(slice_lat) * 0.99) - 1] * 1000
    out["filter_query_median_ms"] = statistics.median(filter_lat) * 1000
    out["feature_filter_query_median_ms"] = statistics.median(feature_lat) * 1000
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--leaves", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=12, help="model runs the events are spread over")
    ap.add_argument("--data-rows", type=int, default=10_000, help="distinct data rows the metrics refer to")
    ap.add_argument("--skip-query", action="store_true", help="skip the 1M-leaf query/RSS child process")
    ap.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    ap.add_argument(
        "--no-gc-tuning", action="store_true", help="keep CPython's default GC thresholds (runstream run tunes them)"
    )
    ap.add_argument("--query-only", type=Path, default=None, help=argparse.SUPPRESS)  # child process mode
    args = ap.parse_args()
    if not args.no_gc_tuning:
        from service.gc_tuning import tune_gc

        tune_gc()  # what the service's entry point (runstream run) does before starting the consumers
    if args.query_only is not None:
        print(json.dumps(await query_bench(args.query_only, args.leaves)))
        return
    tmp = scratch_dir("bench-agg-")
    # the run's broker (RUNSTREAM_KAFKA_BOOTSTRAP) or its own, stopped in the finally below
    broker = contextlib.ExitStack()
    bootstrap = broker.enter_context(kafka_bootstrap(tmp / "kafka"))
    try:
        topic = f"bench-metrics-{int(time.time())}"
        await create_topics(bootstrap, [topic], partitions=6)
        values = await produce(bootstrap, topic, args.events, args.runs, args.data_rows)
        ends = await end_total(bootstrap, topic)
        total = sum(ends.values())
        drain = await raw_drain(bootstrap, topic, total)
        agg, extra = await aggregator_rate(bootstrap, topic, ends, tmp)
        metrics_per_event = sum(len(orjson.loads(v)["metrics"]) for v in values) / len(values)
        out: dict[str, Any] = {
            "events": total,
            "runs": args.runs,
            "data_rows": args.data_rows,
            "metrics_per_event": metrics_per_event,
            "raw_drain_per_s": drain,
            "aggregator_per_s": agg,
            "ratio_aggregator_to_drain": agg / drain,
            **extra,
        }
        print(
            f"events={total} metrics_per_event={metrics_per_event:.2f} raw_drain={drain:,.0f}/s "
            f"aggregator={agg:,.0f}/s ratio={agg / drain:.1%} commits={extra['commits']:.0f} "
            f"commit_gap_median/max={extra['median_commit_gap_s']:.2f}/{extra['max_commit_gap_s']:.2f}s "
            f"dlq={extra['rejected']:.0f} skipped={extra['invalid']:.0f}"
        )
        print(
            f"aggregator time {extra['elapsed_s']:.2f}s: in batches {extra['batch_busy_s']:.2f}s, "
            f"last batch → durable {extra['tail_s']:.2f}s, GC pauses {extra['gc_s']:.2f}s"
        )
        parse = parse_rate(values)
        print(f"parse_event alone={parse:,.0f}/s (share of aggregator time {agg / parse:.0%})")
        out["parse_event_per_s"] = parse
        del values
        if args.skip_query:
            if args.json:
                print(json.dumps(out))
            return
        child = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, __file__, "--query-only", str(tmp), "--leaves", str(args.leaves)]
            + (["--no-gc-tuning"] if args.no_gc_tuning else []),
            check=True,
            capture_output=True,
            text=True,
        )
        q = json.loads(child.stdout.strip().splitlines()[-1])
        for k, v in q.items():
            print(f"{k}={v:,.2f}")
        out["leaves"] = args.leaves
        out.update(q)
        if args.json:
            print(json.dumps(out))
    finally:
        broker.close()


if __name__ == "__main__":
    asyncio.run(main())
