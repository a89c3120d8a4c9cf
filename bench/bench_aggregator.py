"""Aggregator benchmark: throughput vs. the raw aiokafka drain, query p99 at 1M leaves, RSS.

    .venv/bin/python bench/bench_aggregator.py [--events 200000] [--leaves 1000000]

Uses RUNSTREAM_KAFKA_BOOTSTRAP when set, else starts the dev broker (service.devkafka).
1. Pre-produces N metric events (one scalar metric each, 10k data rows, 3 features) to a
   6-partition topic; drains it with a plain AIOKafkaConsumer (consume and discard), then
   runs the real Aggregator (SQLite, commit interval 1 s) over the same topic; reports both
   rates and the ratio.
2. Builds a model run with 1,000,000 leaf values (1M data rows) through the same engine and
   store, serves the query API over real HTTP, and times GET /v1/model-runs/{id}/metrics.
3. Reports RSS after 10k and after 1M data rows (bounded cache of hot rows).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consumers.aggregator import Aggregator
from service.aggregation import MessageOps, MetricLeaf, apply_message
from service.config import Settings
from service.kafka_admin import create_topics
from service.query_api import build_query_app
from service.state_store import CachedState, SqlStateBackend


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def produce(bootstrap: str, topic: str, n: int) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=262144, acks=1)
    await p.start()
    try:
        futs = []
        for i in range(n):
            run = f"bench-run-{i % 12}"
            f = ("cat", "dog", "bird")[i % 3]
            ev = {
                "model_run_id": run,
                "metrics": [
                    {
                        "data_row": {"id": f"dr{i % 10000}"},
                        "metric_name": "box_iou",
                        "feature_name": f,
                        "value": (i % 997) / 997,
                    }
                ],
            }
            futs.append(await p.send(topic, orjson.dumps(ev), key=run.encode()))
            if len(futs) >= 5000:
                await asyncio.gather(*futs)
                futs.clear()
        await asyncio.gather(*futs)
    finally:
        await p.stop()


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


async def aggregator_rate(bootstrap: str, topic: str, ends: dict[TopicPartition, int], tmp: Path) -> float:
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

    def on_commit() -> None:
        stored = agg._stored
        if all(stored.get(k, 0) >= v for k, v in want.items() if v):
            done.set()

    agg = Aggregator(settings, backend, on_commit=on_commit)
    orig = agg._handle

    async def timed(rec: object) -> None:
        if not t_first:
            t_first.append(time.perf_counter())
        await orig(rec)

    agg._handle = timed  # type: ignore[method-assign]
    task = asyncio.create_task(agg.run(stop))
    await done.wait()
    elapsed = time.perf_counter() - t_first[0]
    stop.set()
    await task
    backend.close()
    return sum(want.values()) / elapsed


async def query_bench(tmp: Path, leaves: int) -> dict[str, float]:
    """Build a run with `leaves` leaf values (one per data row) and time the run-level query."""
    backend = SqlStateBackend.sqlite(tmp / "query-state.sqlite3")
    state = CachedState(backend, max_clean=200_000)
    run = "big-run"
    out: dict[str, float] = {}
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
    api_backend = SqlStateBackend.sqlite(tmp / "query-state.sqlite3")
    app = build_query_app(api_backend, Settings())
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
    await runner.cleanup()
    api_backend.close()
    backend.close()
    lat.sort()
    slice_lat.sort()
    out["run_query_p50_ms"] = statistics.median(lat) * 1000
    out["run_query_p99_ms"] = lat[int(len(lat) * 0.99) - 1] * 1000
    out["slice100_query_p99_ms"] = slice_lat[int(len(slice_lat) * 0.99) - 1] * 1000
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--leaves", type=int, default=1_000_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-agg-"))
    broker = None
    bootstrap = os.environ.get("RUNSTREAM_KAFKA_BOOTSTRAP")
    if not bootstrap:
        from service.devkafka import DevKafka

        broker = DevKafka(data_dir=tmp / "kafka")
        broker.start()
        bootstrap = broker.bootstrap
    try:
        topic = f"bench-metrics-{int(time.time())}"
        await create_topics(bootstrap, [topic], partitions=6)
        await produce(bootstrap, topic, args.events)
        ends = await end_total(bootstrap, topic)
        total = sum(ends.values())
        drain = await raw_drain(bootstrap, topic, total)
        agg = await aggregator_rate(bootstrap, topic, ends, tmp)
        print(f"events={total} raw_drain={drain:,.0f}/s aggregator={agg:,.0f}/s ratio={agg / drain:.1%}")
        q = await query_bench(tmp, args.leaves)
        for k, v in q.items():
            print(f"{k}={v:,.2f}")
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    asyncio.run(main())
