"""Freshness after a backfill: how long after ``runstream backfill`` finishes the API serves it all.

    .venv/bin/python bench/bench_freshness.py [--events 1000000] [--runs 50] [--json]

Uses RUNSTREAM_KAFKA_BOOTSTRAP when set, else starts its own dev broker (bench/_harness.py).

1. Writes an event file of the backfill bench's workload (bench_backfill.py: half one-row
   predictions with a customMetric ``iou`` on their own data row, half one-row ``acc`` metrics,
   spread over ``--runs`` model runs).
2. Starts the aggregator as the service runs it (``python -m runstream run --role aggregator``,
   SQLite, commit interval 1 s) with its HTTP API, on empty topics.
3. Runs ``python -m runstream backfill FILE`` (the real command) and times it: backfill duration
   D = process start → exit (every event written and acknowledged).
4. Polls the API (GET /v1/model-runs/{run}/metrics, one request every 0.25 s, the run of the last
   event first, then each other run) until every run reports the expected data-row counts of both
   metrics: the aggregates include every event.

Reports D, the time from the backfill's end until the aggregates were complete (lag), and
(D + lag) / D: how many backfill durations until the dashboard is current (target ≤ 3).

``--phases`` instead runs the aggregator's stages in process on the same events (no broker, no
HTTP, one thread, the service's collector policy) and prints the CPU per event of each
(``time.thread_time``): parse + the event's leaf operations, prefetch, apply, encoding the
commit, the commit transaction (and its wall time), plus the rows each commit wrote per event.
It shows which stage a change moves. ``--segment N`` also prints the stages for every N events:
how the store's side grows with its size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import kafka_bootstrap, scratch_dir
from bench_backfill import bench_events

from devstack.kafka_broker import free_port
from service.kafka import create_topics

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv" / "bin" / "python")


def write_events(path: Path, n: int, runs: int, seed: int = 7) -> dict[str, Counter[str]]:
    """The backfill bench's events, streamed to ``path``; expected data-row counts per run and metric."""
    expected: dict[str, Counter[str]] = {}
    with path.open("wb") as f:
        for kind, run, line in bench_events(n, runs, seed):
            f.write(line + b"\n")
            expected.setdefault(run, Counter())["iou" if kind == "p" else "acc"] += 1
    return expected


def phases(
    n: int, runs: int, batch: int = 5000, commit_every: int = 10000, segment: int = 0
) -> dict[str, float]:
    """CPU µs per event of each aggregator stage on this workload, in process (see ``--phases``).

    ``segment``: also print prefetch and commit µs per event of every ``segment`` events as they
    pass, so their growth with the store's size shows."""
    from consumers.aggregator import ops_from_event
    from service.aggregation import apply_batch
    from service.events import parse_event
    from service.gc_tuning import BatchGc, tune_gc
    from service.state import CachedState, SqlStateBackend

    tmp = scratch_dir("bench-fresh-phases-")
    write_events(tmp / "events.ndjson", n, runs)
    raw = [
        ("prediction" if b'"predictions"' in line else "metric", line)
        for line in (tmp / "events.ndjson").read_bytes().splitlines()
    ]
    backend = SqlStateBackend.sqlite(tmp / "state.sqlite3")
    state = CachedState(backend)
    cpu = dict.fromkeys(("parse", "prefetch", "apply", "encode", "commit", "commit_wall"), 0.0)
    rows = dict.fromkeys(("tree_up", "nv_up", "nv_del", "ragg_up"), 0)
    clock = time.thread_time
    tune_gc()  # the collector policy `runstream run` and the aggregator use
    gc_policy = BatchGc()
    seg_start = dict(cpu)
    try:
        for b in range(0, n, batch):
            gc_policy.pause()
            t = clock()
            ops = [ops_from_event(parse_event(kind, v, max_bytes=1 << 20)) for kind, v in raw[b : b + batch]]  # type: ignore[arg-type]
            cpu["parse"] += clock() - t
            t = clock()
            state.prefetch(ops)
            cpu["prefetch"] += clock() - t
            t = clock()
            for c in range(0, len(ops), 2500):  # the aggregator's apply_chunk
                apply_batch(state, ops[c : c + 2500])
            cpu["apply"] += clock() - t
            if (b + batch) % commit_every == 0 or b + batch >= n:
                t = clock()
                ch = state.take_changes()
                enc = ch.encode()
                cpu["encode"] += clock() - t
                for k in rows:
                    rows[k] += len(getattr(enc, k))
                t, w = clock(), time.perf_counter()
                backend.commit("phases", enc, {}, {})
                cpu["commit"] += clock() - t
                cpu["commit_wall"] += time.perf_counter() - w  # CPU plus waiting on I/O
                state.committed(ch)
            gc_policy.resume()
            if segment and (b + batch) % segment == 0:
                per = {k: (cpu[k] - seg_start[k]) / segment * 1e6 for k in cpu}
                stages = " ".join(f"{k}={v:.1f}" for k, v in per.items())
                print(f"events {b + batch - segment:>8}-{b + batch:<8} {stages}", flush=True)
                seg_start = dict(cpu)
    finally:
        backend.close()
    out = {f"{k}_us": v / n * 1e6 for k, v in cpu.items()}
    out["total_us"] = (sum(cpu.values()) - cpu["commit_wall"]) / n * 1e6
    out.update({f"{k}_per_event": v / n for k, v in rows.items()})
    out["loads_per_event"] = state.loads / n
    return out


async def run_complete(session: aiohttp.ClientSession, url: str, run: str, want: Counter[str]) -> bool:
    """Whether the API reports every expected data-row count of ``run``."""
    async with session.get(f"{url}/v1/model-runs/{run}/metrics") as r:
        if r.status != 200:
            return False
        body = orjson.loads(await r.read())
    got = {m["metric"]: m["count"] for m in body.get("metrics", [])}
    return all(got.get(metric) == n for metric, n in want.items())


def start_aggregator(tmp: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with (tmp / "aggregator.log").open("wb") as log:
        return subprocess.Popen(
            [PYTHON, "-m", "runstream", "run", "--role", "aggregator"], cwd=tmp, env=env, stdout=log, stderr=log
        )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--limit-s", type=float, default=1800, help="give up waiting after this long")
    ap.add_argument("--json", action="store_true", help="print one JSON object with every figure as the last line")
    ap.add_argument("--phases", action="store_true", help="per-stage CPU in process instead (no broker)")
    ap.add_argument("--segment", type=int, default=0, help="--phases: also print the stages per this many events")
    ap.add_argument("--commit-every", type=int, default=10000, help="--phases: events per commit (a multiple of 5000)")
    args = ap.parse_args()
    # the phases run applies batches of 5,000 events and measures and commits at their ends
    if args.segment < 0 or args.segment % 5000:
        ap.error(f"--segment must be 0 or a multiple of 5000, got {args.segment}")
    if args.commit_every <= 0 or args.commit_every % 5000:
        ap.error(f"--commit-every must be a positive multiple of 5000, got {args.commit_every}")
    if args.phases:
        res = phases(args.events, args.runs, commit_every=args.commit_every, segment=args.segment)
        print(" ".join(f"{k}={v:.2f}" for k, v in res.items()))
        if args.json:
            print(json.dumps(res))
        return
    tmp = scratch_dir("bench-fresh-")  # the events file and state are ~0.5 GB at 1M events
    with kafka_bootstrap(tmp / "kafka") as bootstrap:
        await measure(args, bootstrap, tmp)


async def measure(args: argparse.Namespace, bootstrap: str, tmp: Path) -> None:
    """Backfill into ``bootstrap`` while an aggregator process consumes; print the freshness ratio."""
    agg: subprocess.Popen[bytes] | None = None
    try:
        stamp = int(time.time())
        topics = {"pred": f"fresh-pred-{stamp}", "met": f"fresh-met-{stamp}", "dlq": f"fresh-dlq-{stamp}"}
        await create_topics(bootstrap, [topics["pred"], topics["met"]], partitions=6)
        await create_topics(bootstrap, [topics["dlq"]], partitions=1)
        events = tmp / "events.ndjson"
        expected = write_events(events, args.events, args.runs)
        last_run = f"mr-{(args.events - 1) % args.runs}"
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "RUNSTREAM_KAFKA_BOOTSTRAP": bootstrap,
            "RUNSTREAM_TOPIC_PREDICTIONS": topics["pred"],
            "RUNSTREAM_TOPIC_METRICS": topics["met"],
            "RUNSTREAM_TOPIC_DLQ": topics["dlq"],
            "RUNSTREAM_AGGREGATOR_GROUP": f"fresh-agg-{stamp}",
            "RUNSTREAM_STATE_BACKEND": "sqlite",
            "RUNSTREAM_STATE_SQLITE_PATH": str(tmp / "state.sqlite3"),
            "RUNSTREAM_STATE_COMMIT_INTERVAL_MS": "1000",
            "RUNSTREAM_HTTP_PORT": str(port),
            "RUNSTREAM_HTTP_HOST": "127.0.0.1",
        }
        url = f"http://127.0.0.1:{port}"
        agg = start_aggregator(tmp, env)
        log_tail = lambda: (tmp / "aggregator.log").read_text()[-3000:]  # noqa: E731
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 120
            while True:
                assert agg.poll() is None, log_tail()
                try:
                    async with session.get(url + "/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("aggregator did not become ready:\n" + log_tail())
                await asyncio.sleep(0.2)
            t0 = time.perf_counter()
            backfill = await asyncio.create_subprocess_exec(
                PYTHON, "-m", "runstream", "backfill", str(events), cwd=str(tmp), env=env,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )
            _out, err = await backfill.communicate()
            t1 = time.perf_counter()
            if backfill.returncode != 0:
                raise SystemExit(f"backfill failed ({backfill.returncode}): {err.decode(errors='replace')[-2000:]}")
            # One request at a time, starting with the run of the last event written, so the poller
            # adds a few requests per second to the aggregator's process, not one per run per poll.
            pending = sorted(expected, key=lambda r: r != last_run)
            while pending:
                if await run_complete(session, url, pending[0], expected[pending[0]]):
                    pending.pop(0)
                    continue
                if time.perf_counter() - t1 > args.limit_s:
                    raise SystemExit(f"aggregates incomplete after {args.limit_s:.0f} s ({len(pending)} runs left)")
                assert agg.poll() is None, log_tail()
                await asyncio.sleep(0.25)
            t2 = time.perf_counter()
        duration, lag = t1 - t0, t2 - t1
        out = {
            "events": args.events,
            "runs": args.runs,
            "backfill_s": duration,
            "backfill_per_s": args.events / duration,
            "lag_after_backfill_s": lag,
            "complete_after_backfills": (duration + lag) / duration,
            "aggregator_per_s_end_to_end": args.events / (duration + lag),
        }
        print(
            f"events={args.events} backfill={duration:.1f}s ({out['backfill_per_s']:,.0f}/s) "
            f"aggregates complete {lag:.1f}s after it ended = {out['complete_after_backfills']:.1f}x the backfill's "
            f"duration (aggregator end to end {out['aggregator_per_s_end_to_end']:,.0f}/s)"
        )
        if args.json:
            print(json.dumps(out))
    finally:
        if agg is not None and agg.poll() is None:
            agg.terminate()
            try:
                agg.wait(30)
            except subprocess.TimeoutExpired:
                agg.kill()


if __name__ == "__main__":
    asyncio.run(main())
