"""Aggregator throughput by state backend: SQLite (1 replica) beside PostgreSQL with 1 and 2 replicas.

    .venv/bin/python bench/bench_aggregator_pg.py [--events 100000] [--json]

Needs RUNSTREAM_TEST_POSTGRES_DSN (``source .ci/postgres`` starts a private server and sets it);
without it only the SQLite case runs. Each PostgreSQL case gets a new database on that server.
Uses RUNSTREAM_KAFKA_BOOTSTRAP when set, else starts the dev broker (devstack.kafka_broker).

The aggregator bench workload (bench_aggregator.produce) is pre-produced once to a 6-partition
topic. Each case runs its replicas as separate processes (one Aggregator each, commit interval
1 s, a new consumer group per case, so the partitions are split between the replicas by the
group). The clock runs from the first batch any replica applies until the offsets stored in the
state store reach the topic end (everything durable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import kafka_bootstrap, scratch_dir
from bench_aggregator import end_total, produce, raw_drain

from service.config import Settings
from service.kafka import create_topics
from service.state import open_backend

ROOT = Path(__file__).resolve().parents[1]


def settings_for(bootstrap: str, topic: str, group: str, store: str) -> Settings:
    backend: dict[str, Any] = (
        {"state_backend": "postgres", "state_postgres_dsn": store}
        if store.startswith("postgres")
        else {"state_backend": "sqlite", "state_sqlite_path": Path(store)}
    )
    return Settings(
        kafka_bootstrap=bootstrap,
        topic_metrics=topic,
        topic_predictions=topic + "-unused",
        topic_dlq=topic + "-dlq",
        aggregator_group=group,
        state_commit_interval_ms=1000,
        **backend,
    )


async def child(bootstrap: str, topic: str, group: str, store: str) -> None:
    """One replica: an Aggregator until SIGTERM; prints ``first <epoch>`` at its first batch."""
    from consumers.aggregator import Aggregator
    from service.gc_tuning import tune_gc

    tune_gc()
    settings = settings_for(bootstrap, topic, group, store)
    backend = open_backend(settings)
    agg = Aggregator(settings, backend)
    orig = agg._process
    seen: list[bool] = []

    async def timed(batch: Any) -> None:
        if not seen:
            seen.append(True)
            print(f"first {time.time()}", flush=True)
        await orig(batch)

    agg._process = timed  # type: ignore[method-assign]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await agg.run(stop)
    finally:
        backend.close()


async def run_case(
    bootstrap: str, topic: str, ends: dict[tuple[str, int], int], store: str, replicas: int
) -> dict[str, float]:
    group = f"bench-pg-{time.time()}"
    settings = settings_for(bootstrap, topic, group, store)
    await create_topics(bootstrap, [settings.topic_predictions, settings.topic_dlq], partitions=1)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--child", bootstrap, topic, group, store,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(replicas)
    ]
    firsts: list[float] = []

    async def read_first(p: asyncio.subprocess.Process) -> None:
        assert p.stdout is not None
        async for line in p.stdout:
            if line.startswith(b"first "):
                firsts.append(float(line.split()[1]))

    readers = [asyncio.create_task(read_first(p)) for p in procs]
    backend = open_backend(settings)
    try:
        while True:
            stored = await asyncio.to_thread(backend.load_offsets, group, sorted(ends))
            if all(stored.get(tp, 0) >= end for tp, end in ends.items() if end):
                t_done = time.time()
                break
            for p in procs:
                if p.returncode is not None:
                    raise SystemExit(f"a replica exited with {p.returncode}")
            await asyncio.sleep(0.1)
    finally:
        backend.close()
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            await p.wait()
        for r in readers:
            r.cancel()
    total = sum(ends.values())
    return {"rate": total / (t_done - min(firsts)), "replicas_started": float(len(firsts))}


def new_database(dsn: str, name: str) -> str:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    base, _, _db = dsn.rpartition("/")
    return f"{base}/{name}"


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--json", action="store_true", help="print one JSON object with every figure as the last line")
    ap.add_argument("--child", nargs=4, metavar=("BOOTSTRAP", "TOPIC", "GROUP", "STORE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        await child(*args.child)
        return
    tmp = scratch_dir("bench-pg-")
    dsn = os.environ.get("RUNSTREAM_TEST_POSTGRES_DSN")
    with kafka_bootstrap(tmp / "kafka") as bootstrap:
        topic = f"bench-pg-{int(time.time())}"
        await create_topics(bootstrap, [topic], partitions=6)
        await produce(bootstrap, topic, args.events)
        ends = {(tp.topic, tp.partition): o for tp, o in (await end_total(bootstrap, topic)).items()}
        total = sum(ends.values())
        out: dict[str, Any] = {"events": total}
        drain = await raw_drain(bootstrap, topic, total)
        out["raw_drain_per_s"] = drain
        print(f"raw drain: {drain:,.0f} events/s", flush=True)
        cases: list[tuple[str, str, int]] = [("sqlite_1", str(tmp / "state.sqlite3"), 1)]
        if dsn:
            stamp = int(time.time())
            cases += [
                ("postgres_1", new_database(dsn, f"rsbench_{stamp}_1"), 1),
                ("postgres_2", new_database(dsn, f"rsbench_{stamp}_2"), 2),
            ]
        else:
            print("RUNSTREAM_TEST_POSTGRES_DSN is not set: SQLite only (source .ci/postgres for PostgreSQL)")
        for name, store, replicas in cases:
            r = await run_case(bootstrap, topic, ends, store, replicas)
            out[f"{name}_per_s"] = r["rate"]
            print(
                f"{name}: {r['rate']:,.0f} events/s ({replicas} replica(s), {r['replicas_started']:.0f} of them "
                f"applied batches; {r['rate'] / drain:.1%} of the drain)",
                flush=True,
            )
        if args.json:
            print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
