"""How close to the raw drain can *any* consumer that reads the JSON get on this machine?

    .venv/bin/python bench/bench_ceiling.py [--events 200000] [--rounds 3] [--json] [--workload uploader]

The uploader and aggregator targets are ratios against the raw aiokafka drain (consume and
discard). This bench measures, on the same pre-produced topics and in the same run, interleaved
round by round so that machine noise hits every case alike:

- ``drain``: ``getmany`` and discard (the baseline of both targets);
- ``drain + orjson.loads``: decode every message's JSON and nothing else, i.e. the ceiling of
  any consumer that has to look inside the events;
- ``drain + parse_event``: decode and validate with ``service.events.parse_event`` (what the
  uploader and the aggregator do before any work of their own);
- uploader workload only: ``drain + parse_upload`` (validation, uuids and the NDJSON bytes of each
  row: the uploader's per-message work) and ``drain + parse_upload + join`` (plus the ``b"\\n".join``
  of a fetch's rows into one import body). With the full uploader process's CPU per event
  (``bench_uploader.py``) these are the floor of the uploader's CPU per event.

Every case reports events/s and the CPU time of this process per event (``time.process_time``:
the broker runs in another process and is not counted).

Both workloads are the ones of ``bench_uploader.py`` (1-row bbox predictions with a
customMetric) and ``bench_aggregator.py`` (metric events with 1–5 metrics). ``drain + orjson.loads``
is a ceiling of the machine for any consumer that looks inside the events. ``drain + parse_event``
is not: it is the cost of our own validator, which ``bench_parse.py`` measures against
``orjson.loads`` per event shape (target: at most 3× a plain decode). The real consumers also
batch, store, commit and talk HTTP on the same two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_aggregator import bench_event
from bench_uploader import RUNS
from bench_uploader import event as upload_event

from service.events import parse_event, parse_upload
from service.kafka import create_topics


async def produce(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=262144, acks=1)
    await p.start()
    try:
        pending = []
        for key, value in values:
            pending.append(await p.send(topic, value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await p.stop()


Work = Callable[[bytes], object] | None
BatchWork = Callable[[list[bytes]], object]


def _upload_join(values: list[bytes]) -> object:
    """What the uploader does to a batch of messages before HTTP: parse_upload each, join the rows."""
    return b"\n".join([parse_upload("prediction", v, max_bytes=1_048_576).payload for v in values])  # type: ignore[union-attr]


async def consume(bootstrap: str, topic: str, n: int, work: Work | BatchWork) -> tuple[float, float]:
    """Events/s and CPU µs per event (this process) to fetch (and work on) all n records; partitions are
    assigned, no group join to wait for. ``work`` is per message, or per fetch when it is ``_upload_join``."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        parts = c.partitions_for_topic(topic) or set()
        if not parts:
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(topic) or set()
        c.assign([TopicPartition(topic, p) for p in parts])
        await c.seek_to_beginning()
        seen = 0
        per_fetch = work is _upload_join
        t0 = time.perf_counter()
        c0 = time.process_time()
        while seen < n:
            batch = await c.getmany(timeout_ms=1000, max_records=5000)
            for records in batch.values():
                seen += len(records)
                if per_fetch:
                    _upload_join([r.value or b"" for r in records])
                elif work is not None:
                    for r in records:
                        work(r.value or b"")  # type: ignore[arg-type]
        cpu = time.process_time() - c0
        return n / (time.perf_counter() - t0), cpu / n * 1e6
    finally:
        await c.stop()


def workloads(n: int) -> dict[str, tuple[str, list[tuple[bytes, bytes]]]]:
    rng = random.Random(7)
    up = [(RUNS[i % len(RUNS)].encode(), upload_event(i, RUNS[i % len(RUNS)])) for i in range(n)]
    agg = []
    for i in range(n):
        run, value = bench_event(rng, i)
        agg.append((run.encode(), value))
    return {"uploader": ("prediction", up), "aggregator": ("metric", agg)}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workload", action="append", choices=["uploader", "aggregator"],
                    help="only these workloads (default: both)")
    args = ap.parse_args()
    broker = None
    bootstrap = os.environ.get("RUNSTREAM_KAFKA_BOOTSTRAP")
    if not bootstrap:
        from devstack.kafka_broker import DevKafka

        broker = DevKafka(data_dir=Path(tempfile.mkdtemp(prefix="bench-ceiling-")) / "kafka")
        broker.start()
        bootstrap = broker.bootstrap
    out: dict[str, Any] = {"events": args.events, "rounds": args.rounds}
    try:
        for name, (kind, values) in workloads(args.events).items():
            if args.workload and name not in args.workload:
                continue
            topic = f"bench-ceiling-{name}-{int(time.time())}"
            await create_topics(bootstrap, [topic], partitions=6)
            await produce(bootstrap, topic, values)
            cases: dict[str, Work | BatchWork] = {
                "drain": None,
                "drain+orjson.loads": orjson.loads,
                "drain+parse_event": lambda raw, kind=kind: parse_event(kind, raw, max_bytes=1_048_576),
            }
            if name == "uploader":
                cases["drain+parse_upload"] = lambda raw: parse_upload("prediction", raw, max_bytes=1_048_576)
                cases["drain+parse_upload+join"] = _upload_join
            rates: dict[str, list[float]] = {c: [] for c in cases}
            cpus: dict[str, list[float]] = {c: [] for c in cases}
            for _ in range(args.rounds):
                for case, work in cases.items():
                    rate, cpu_us = await consume(bootstrap, topic, len(values), work)
                    rates[case].append(rate)
                    cpus[case].append(cpu_us)
            base = statistics.median(rates["drain"])
            for case, rs in rates.items():
                med = statistics.median(rs)
                cpu = statistics.median(cpus[case])
                out[f"{name}.{case}.per_s"] = med
                out[f"{name}.{case}.ratio"] = med / base
                out[f"{name}.{case}.cpu_us"] = cpu
                print(f"{name:<10} {case:<24} {med:>10,.0f} events/s  {med / base:6.1%} of drain  "
                      f"{cpu:5.2f} us CPU/event (rounds: {', '.join(f'{r:,.0f}' for r in rs)})")
        if args.json:
            print(json.dumps(out))
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    asyncio.run(main())
