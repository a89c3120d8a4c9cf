"""Uploader benchmark: raw drain vs. uploader end to end vs. a naive uploader, latency at a
fixed produce rate, and peak RSS with a 1M-event backlog while the API is down.

    .venv/bin/python bench/bench_uploader.py [--events 100000] [--latency-rate 2000]
        [--latency-seconds 20] [--backlog 1000000] [--naive-seconds 20]
        [--skip throughput|naive|latency|memory] [--compare LABEL=CHECKOUT] [--rounds N] [--profile DIR]

``--compare before=/tmp/up-before`` also runs the uploader of another checkout (a git worktree of an
earlier commit) on the same topic, interleaved round by round with this one; each throughput run gets
a fresh local API process, so every variant stores the same rows into an empty store.

Uses RUNSTREAM_KAFKA_BOOTSTRAP when set, else starts the dev broker (devstack.kafka_broker). The
local Labelbox-compatible API and every uploader run as separate processes (as deployed);
the uploader runs with default settings (batch 5000 events / 8 MiB / 500 ms linger, 4 in
flight). Data rows are pre-registered in the model runs, so every variant does the same
Labelbox work per row.
1. Pre-produce N prediction events (one bbox row with a customMetric each, 12 model runs,
   6 partitions). Drain them with a plain AIOKafkaConsumer (consume and discard): the ceiling.
2. Uploader process on the same topic, timed from start until every row is in the store.
3. Naive uploader on the same topic: per event parse, one import, wait, commit; timed.
4. Latency: produce at a fixed rate to a fresh topic with the uploader running; the time
   from produce to "row count of its model run reached it" (polled every 50 ms).
5. Memory: produce a backlog, make the API fail every request, run the uploader and
   sample its RSS (VmHWM) for 45 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _harness import kafka_bootstrap, scratch_dir  # noqa: E402

from service.events import parse_event  # noqa: E402
from service.kafka import create_topics  # noqa: E402
from service.labelbox.client import LabelboxClient  # noqa: E402

API_KEY = "bench-api-key"
ADMIN = "bench-admin"
RUNS = [f"bench-run-{i}" for i in range(12)]
DATA_ROWS = [f"dr-{i}" for i in range(500)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def event(i: int, run: str) -> bytes:
    row = {"dataRow": {"id": DATA_ROWS[i % len(DATA_ROWS)]}, "name": "car", "confidence": 0.8,
           "bbox": {"top": i % 500, "left": i % 300, "height": 40, "width": 60 + i},  # unique uuid per event
           "customMetrics": [{"name": "box_iou", "value": (i % 100) / 100}]}
    return orjson.dumps({"model_run_id": run, "predictions": [row]})


async def produce(bootstrap: str, topic: str, n: int, start: int = 0) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=262144, acks=1)
    await p.start()
    try:
        pending = []
        for i in range(start, start + n):
            run = RUNS[i % len(RUNS)]
            pending.append(await p.send(topic, event(i, run), key=run.encode()))
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await p.stop()


class Api:
    """The local Labelbox API in its own process, driven through /admin over HTTP."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.db = workdir / "lb.sqlite3"
        self.url = f"http://127.0.0.1:{self.port}/graphql"
        self.admin = f"http://127.0.0.1:{self.port}/admin"
        self.proc: asyncio.subprocess.Process | None = None
        self.http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runstream", "local-labelbox", "--port", str(self.port), "--db", str(self.db),
            "--api-key", API_KEY, "--admin-token", ADMIN, "--max-body-size", str(256 * 1024 * 1024),
            cwd=str(ROOT), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        self.http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"})
        for _ in range(200):
            try:
                async with self.http.get(f"http://127.0.0.1:{self.port}/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError("local Labelbox API did not start")

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        assert self.http is not None
        async with self.http.request(method, self.admin + path, json=body) as r:
            r.raise_for_status()
            return await r.json()

    async def seed(self, runs: list[str]) -> None:
        await self.call("POST", "/data-rows", {"dataRows": [{"id": d} for d in DATA_ROWS]})
        await self.call("POST", "/model-runs", {"modelRuns": [{"id": r, "name": r, "dataRowIds": DATA_ROWS}
                                                              for r in runs]})

    async def counts(self, runs: list[str]) -> dict[str, int]:
        out = {}
        for r in runs:
            out[r] = (await self.call("GET", f"/model-runs/{r}/counts"))["predictions"]
        return out

    async def stop(self) -> None:
        if self.http:
            await self.http.close()
        if self.proc and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


def uploader_env(bootstrap: str, topic: str, group: str, url: str, dlq: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RUNSTREAM_KAFKA_BOOTSTRAP": bootstrap,
           "RUNSTREAM_TOPIC_PREDICTIONS": topic, "RUNSTREAM_TOPIC_METRICS": topic + "-m",
           "RUNSTREAM_TOPIC_LABELS": topic + "-l", "RUNSTREAM_TOPIC_DLQ": dlq, "RUNSTREAM_UPLOADER_GROUP": group,
           "RUNSTREAM_LABELBOX_URL": url, "RUNSTREAM_LABELBOX_API_KEY": API_KEY}
    env.update(extra)
    return env


async def spawn_uploader(env: dict[str, str], log: Path, *, root: Path = ROOT,
                         profile: str | None = None) -> asyncio.subprocess.Process:
    fh = log.open("ab")
    prof = ["-m", "cProfile", "-o", profile] if profile else []
    return await asyncio.create_subprocess_exec(sys.executable, *prof, "-m", "consumers.uploader", cwd=str(root),
                                                env=env, stdout=fh, stderr=fh)


async def stop_proc(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def drain(bootstrap: str, topic: str, n: int) -> float:
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"drain-{time.time_ns()}",
                         auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    try:
        seen = 0
        t0 = time.perf_counter()
        while seen < n:
            data = await c.getmany(timeout_ms=1000)
            seen += sum(len(v) for v in data.values())
        return n / (time.perf_counter() - t0)
    finally:
        await c.stop()


async def naive(bootstrap: str, topic: str, url: str, seconds: float) -> float:
    """One event per request: parse, import one row, wait for it, commit that offset."""
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"naive-{time.time_ns()}",
                         auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=1)
    await c.start()
    done = 0
    async with LabelboxClient(url, API_KEY) as client:
        t0 = time.perf_counter()
        try:
            while time.perf_counter() - t0 < seconds:
                data = await c.getmany(timeout_ms=1000, max_records=1)
                for tp, recs in data.items():
                    for r in recs:
                        ev = parse_event("prediction", r.value, max_bytes=1 << 20)
                        rows = [orjson.dumps(p.to_ndjson()) for p in ev.predictions]  # type: ignore[union-attr]
                        name = f"naive-{tp.partition}-{r.offset}"
                        st = await client.create_prediction_import(ev.model_run_id, name, b"\n".join(rows))
                        await client.wait_import(ev.model_run_id, name, first=st)
                        await c.commit({tp: r.offset + 1})
                        done += 1
        finally:
            await c.stop()
        return done / (time.perf_counter() - t0)


async def throughput_once(bootstrap: str, topic: str, n: int, work: Path, root: Path, group: str, dlq: str,
                          profile: str | None) -> dict[str, float]:
    """One uploader process (code from ``root``) against a fresh local API: drain the whole topic."""
    api = Api(work / group)
    (work / group).mkdir(parents=True, exist_ok=True)
    await api.start()
    try:
        await api.seed(RUNS)
        env = uploader_env(bootstrap, topic, group, api.url, dlq)
        env["PYTHONPATH"] = str(root)
        assert api.proc is not None
        api_cpu0 = cpu_s(api.proc.pid)
        prof = None if profile is None else os.path.join(profile, f"{group}.prof")
        t0 = time.perf_counter()
        log = work / f"{group}.log"
        proc = await spawn_uploader(env, log, root=root, profile=prof)
        start_cpu = await startup_cpu_s(proc, log)
        first: float | None = None
        while (stored := sum((await api.counts(RUNS)).values())) < n:
            if stored and first is None:
                first = time.perf_counter()
            await asyncio.sleep(0.05)
        up_s = time.perf_counter() - t0
        steady = n / (time.perf_counter() - (first or t0))
        _, up_hwm = vm_hwm_mb(proc.pid)
        up_cpu = cpu_s(proc.pid)
        api_cpu = cpu_s(api.proc.pid) - api_cpu0
        await stop_proc(proc)
    finally:
        await api.stop()
    return {"e2e": n / up_s, "seconds": up_s, "steady": steady, "up_cpu_s": up_cpu, "api_cpu_s": api_cpu,
            "up_cpu_us": up_cpu / n * 1e6, "api_cpu_us": api_cpu / n * 1e6, "rss": up_hwm,
            "up_start_cpu_s": start_cpu, "up_work_cpu_us": (up_cpu - start_cpu) / n * 1e6}


async def startup_cpu_s(proc: asyncio.subprocess.Process, log: Path) -> float:
    """The uploader's CPU seconds when it logs its partition assignment: interpreter start, imports,
    clients, credential check and group join, a fixed cost per process that is not per event."""
    deadline = time.perf_counter() + 120
    while time.perf_counter() < deadline and proc.returncode is None:
        if _joined(log):
            return cpu_s(proc.pid)
        await asyncio.sleep(0.005)
    raise RuntimeError(f"the uploader did not join its group (see {log})")


def _joined(log: Path) -> bool:
    return b"partitions assigned" in log.read_bytes()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm_mb(pid: int) -> tuple[float, float]:
    rss = hwm = float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return rss, hwm


def _variant(spec: str) -> tuple[str, Path]:
    label, _, path = spec.partition("=")
    return label, Path(path).resolve()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--naive-seconds", type=float, default=20)
    ap.add_argument("--latency-rate", type=int, default=2000)
    ap.add_argument("--latency-seconds", type=float, default=20)
    ap.add_argument("--backlog", type=int, default=1_000_000)
    ap.add_argument("--memory-seconds", type=float, default=45)
    ap.add_argument("--skip", action="append", default=[], choices=["throughput", "naive", "latency", "memory"])
    ap.add_argument("--compare", action="append", default=[], metavar="LABEL=PATH", type=_variant,
                    help="also run the uploader of another checkout (e.g. a git worktree of the previous commit) "
                         "on the same topic, each run against a fresh local API; side by side, interleaved")
    ap.add_argument("--rounds", type=int, default=1, help="throughput rounds (drain + every variant per round)")
    ap.add_argument("--profile", metavar="DIR", type=lambda d: str(Path(d).resolve()),
                    help="run the throughput uploaders under cProfile, output in DIR")
    args = ap.parse_args()

    work = scratch_dir("bench-uploader-")
    # the run's broker (RUNSTREAM_KAFKA_BOOTSTRAP) or its own, stopped in the finally below
    broker = contextlib.ExitStack()
    bootstrap = broker.enter_context(kafka_bootstrap(work / "kafka"))
    api = Api(work)
    await api.start()
    await api.seed(RUNS)
    stamp = time.strftime("%H%M%S")
    results: dict[str, Any] = {}
    try:
        if "throughput" not in args.skip:
            topic = f"bench-pred-{stamp}"
            dlq = f"bench-dlq-{stamp}"
            await create_topics(bootstrap, [topic], partitions=6)
            await create_topics(bootstrap, [dlq], partitions=1)
            t0 = time.perf_counter()
            await produce(bootstrap, topic, args.events)
            print(f"produced {args.events} events in {time.perf_counter() - t0:.1f} s", flush=True)
            variants = [("this", ROOT), *args.compare]
            runs: dict[str, list[dict[str, float]]] = {lbl: [] for lbl, _ in variants}
            drains: list[float] = []
            for rnd in range(args.rounds):
                drain_rate = await drain(bootstrap, topic, args.events)
                drains.append(drain_rate)
                print(f"[round {rnd + 1}] raw drain: {drain_rate:,.0f} events/s", flush=True)
                for label, root in variants:
                    r = await throughput_once(bootstrap, topic, args.events, work, root,
                                              f"bench-up-{stamp}-{label}-{rnd}", dlq, args.profile)
                    r["drain"] = drain_rate
                    runs[label].append(r)
                    print(f"[round {rnd + 1}] {label}: end to end {r['e2e']:,.0f} events/s ({r['seconds']:.1f} s); "
                          f"steady {r['steady']:,.0f} events/s; uploader CPU {r['up_cpu_us']:.1f} us/event "
                          f"(start-up {r['up_start_cpu_s']:.2f} s, then {r['up_work_cpu_us']:.1f} us/event); "
                          f"API CPU {r['api_cpu_us']:.1f} us/row; peak RSS {r['rss']:.0f} MB; "
                          f"/ drain {r['e2e'] / drain_rate:.1%}", flush=True)
            up_rate = statistics.median(r["e2e"] for r in runs["this"])
            drain_rate = statistics.median(drains)
            results.update(drain=drain_rate, uploader=up_rate, ratio_drain=up_rate / drain_rate,
                           runs=runs)
            for label, _ in variants:
                rs = runs[label]
                print(f"{label} (median of {len(rs)}): e2e {statistics.median(r['e2e'] for r in rs):,.0f}/s, "
                      f"steady {statistics.median(r['steady'] for r in rs):,.0f}/s, uploader CPU "
                      f"{statistics.median(r['up_cpu_us'] for r in rs):.1f} us/event (start-up "
                      f"{statistics.median(r['up_start_cpu_s'] for r in rs):.2f} s, after it "
                      f"{statistics.median(r['up_work_cpu_us'] for r in rs):.1f} us/event), API CPU "
                      f"{statistics.median(r['api_cpu_us'] for r in rs):.1f} us/row", flush=True)
            if "naive" not in args.skip:
                naive_rate = await naive(bootstrap, topic, api.url, args.naive_seconds)
                print(f"naive uploader: {naive_rate:,.1f} events/s", flush=True)
                results.update(naive=naive_rate, ratio_naive=up_rate / naive_rate)
                print(f"uploader / naive = {up_rate / naive_rate:,.0f}x", flush=True)
            print(f"uploader / drain = {up_rate / drain_rate:.1%}", flush=True)

        if "latency" not in args.skip:
            topic = f"bench-lat-{stamp}"
            await create_topics(bootstrap, [topic], partitions=6)
            env = uploader_env(bootstrap, topic, f"bench-lat-{stamp}", api.url, f"bench-dlq-{stamp}")
            before = await api.counts(RUNS)
            proc = await spawn_uploader(env, work / "uploader-lat.log")
            await asyncio.sleep(3)  # joined the group
            produced: dict[str, list[float]] = {r: [] for r in RUNS}
            p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, acks=1)
            await p.start()
            total = int(args.latency_rate * args.latency_seconds)
            stored_at: dict[str, list[float]] = {r: [] for r in RUNS}

            async def poll() -> None:
                while sum(len(v) for v in stored_at.values()) < total:
                    now = time.perf_counter()
                    counts = await api.counts(RUNS)
                    for r in RUNS:
                        n = counts[r] - before[r]
                        while len(stored_at[r]) < min(n, len(produced[r])):
                            stored_at[r].append(now)
                    await asyncio.sleep(0.05)

            poller = asyncio.create_task(poll())
            t0 = time.perf_counter()
            base = 10_000_000
            for i in range(total):
                target = t0 + i / args.latency_rate
                delay = target - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                run = RUNS[i % len(RUNS)]
                produced[run].append(time.perf_counter())
                await p.send(topic, event(base + i, run), key=run.encode())
            await p.flush()
            await p.stop()
            await asyncio.wait_for(poller, 120)
            await stop_proc(proc)
            lat = sorted(s - p_ for r in RUNS for p_, s in zip(produced[r], stored_at[r], strict=True))
            p50 = statistics.median(lat)
            p99 = lat[int(len(lat) * 0.99) - 1]
            results.update(p50=p50, p99=p99, lat_max=lat[-1])
            print(f"latency at {args.latency_rate}/s for {args.latency_seconds:.0f} s: p50 {p50 * 1000:.0f} ms, "
                  f"p99 {p99 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms", flush=True)

        if "memory" not in args.skip:
            topic = f"bench-backlog-{stamp}"
            await create_topics(bootstrap, [topic], partitions=6)
            t0 = time.perf_counter()
            await produce(bootstrap, topic, args.backlog, start=20_000_000)
            print(f"backlog of {args.backlog} produced in {time.perf_counter() - t0:.1f} s", flush=True)
            await api.call("POST", "/faults", {"kind": "http_error", "status": 503, "fraction": 1.0})
            env = uploader_env(bootstrap, topic, f"bench-mem-{stamp}", api.url, f"bench-dlq-{stamp}")
            proc = await spawn_uploader(env, work / "uploader-mem.log")
            peak = 0.0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < args.memory_seconds:
                await asyncio.sleep(1)
                _, hwm = vm_hwm_mb(proc.pid)
                peak = max(peak, hwm)
            rss, hwm = vm_hwm_mb(proc.pid)
            await stop_proc(proc)
            await api.call("DELETE", "/faults")
            results.update(rss_peak=max(peak, hwm), rss_end=rss)
            print(f"API down, backlog {args.backlog}: peak RSS {max(peak, hwm):.0f} MB (now {rss:.0f} MB)",
                  flush=True)
        print(orjson.dumps(results).decode())
    finally:
        await api.stop()
        broker.close()


if __name__ == "__main__":
    asyncio.run(main())
