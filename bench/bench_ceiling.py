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
the broker runs in another process and is not counted). The process runs with the consumer
processes' GC settings (``service.gc_tuning``), so allocation-heavy cases pay what they pay there.

The uploader workload also prints the uploader's CPU floor, one table from one run (target: 5 µs of
uploader CPU per event), adding to the cases above:

- ``drain, uploader fetch``: the drain with the uploader runtime's fetch settings (16 MiB per fetch,
  1 MiB per partition, 2,000 records per ``getmany``);
- ``drain, no CRC``: aiokafka without its per-batch CRC check, the cheapest drain aiokafka offers;
- ``drain+batch decode``: one msgspec decode per fetch, ``b"[" + b",".join(values) + b"]"`` into a list
  of the contract's wire Structs (structure only: no semantic checks, no upload form);
- ``drain+best alternative``: the best alternative design, written as the tightest loop: per fetch,
  ``parse_event`` per message (the contract's single validator), each row's upload line (the sorted dump
  and SHA-1 of the deterministic uuid, the NDJSON line) grouped per model run, one join per run. No
  Record, no batcher, no offsets, no HTTP; the rows are taken as already in NDJSON form (the bench's
  rows are), so it is a lower bound for any uploader that validates with the contract;
- ``uploader process`` (unless ``--no-uploader-process``): the real uploader process
  (``bench_uploader.py``'s run against the local Labelbox API) on the same topic, its CPU per event
  after its start-up.

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
import contextlib
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import kafka_bootstrap, scratch_dir
from bench_aggregator import bench_event
from bench_uploader import ROOT, RUNS, throughput_once
from bench_uploader import event as upload_event

from service.events import parse_event, parse_upload
from service.events.uuids import prediction_hasher, uuid5_text
from service.events.wire import PredictionEventWire
from service.gc_tuning import tune_gc
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


Work = Callable[[Any], object] | None  # per message (bytes), or per fetch (list[bytes]) when in _PER_FETCH


def _upload_join(values: list[bytes]) -> object:
    """What the uploader does to a batch of messages before HTTP: parse_upload each, join the rows."""
    return b"\n".join([parse_upload("prediction", v, max_bytes=1_048_576).payload for v in values])  # type: ignore[union-attr]


_BATCH_DECODER = msgspec.json.Decoder(list[PredictionEventWire])


def _batch_decode(values: list[bytes]) -> object:
    """One compiled decode of a whole fetch into the contract's wire Structs (structure only)."""
    return _BATCH_DECODER.decode(b"[" + b",".join(values) + b"]")


_SORT = orjson.OPT_SORT_KEYS


def _best_alternative(values: list[bytes]) -> object:
    """The least per-event work a complete uploader must do, as one tight loop per fetch: validate with
    parse_event, build each row's upload line (deterministic uuid included), group the lines per model
    run, one import body per run."""
    dumps, sort = orjson.dumps, _SORT
    groups: dict[str, list[bytes]] = {}
    for v in values:
        ev = parse_event("prediction", v, max_bytes=1_048_576)
        mr = ev.model_run_id
        lines = groups.get(mr)
        if lines is None:
            lines = groups[mr] = []
        hasher = prediction_hasher(mr)
        for p in ev.predictions:  # type: ignore[union-attr]
            body = p.raw
            h = hasher.copy()
            h.update(dumps(body, option=sort))
            lines.append(b'{"uuid":"' + uuid5_text(h).encode() + b'",' + dumps(body)[1:])
    return [b"\n".join(lines) for lines in groups.values()]


_PER_FETCH: tuple[object, ...] = (_upload_join, _batch_decode, _best_alternative)
# The uploader runtime's fetch settings (consumers.runtime.RuntimeConfig defaults).
UPLOADER_FETCH: dict[str, Any] = {"fetch_max_bytes": 16 * 1_048_576, "max_partition_fetch_bytes": 1_048_576}
UPLOADER_MAX_RECORDS = 2_000


async def consume(bootstrap: str, topic: str, n: int, work: Work, options: dict[str, Any] | None = None,
                  max_records: int = 5000) -> tuple[float, float]:
    """Events/s and CPU µs per event (this process) to fetch (and work on) all n records; partitions are
    assigned, no group join to wait for. ``work`` is per message, or per fetch when it is in ``_PER_FETCH``;
    ``options`` go to the consumer (aiokafka's defaults otherwise)."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **(options or {}))
    await c.start()
    try:
        parts = c.partitions_for_topic(topic) or set()
        if not parts:
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(topic) or set()
        c.assign([TopicPartition(topic, p) for p in parts])
        await c.seek_to_beginning()
        seen = 0
        per_fetch = work in _PER_FETCH
        t0 = time.perf_counter()
        c0 = time.process_time()
        while seen < n:
            batch = await c.getmany(timeout_ms=1000, max_records=max_records)
            for records in batch.values():
                seen += len(records)
                if work is None:
                    continue
                if per_fetch:
                    work([r.value or b"" for r in records])
                else:
                    for r in records:
                        work(r.value or b"")
        cpu = time.process_time() - c0
        return n / (time.perf_counter() - t0), cpu / n * 1e6
    finally:
        await c.stop()


FLOOR_TARGET_US = 5.0
FLOOR_ROWS = (
    ("drain", "drain: getmany and discard (aiokafka defaults, 5,000 records per getmany)"),
    ("drain, uploader fetch", "drain with the uploader's fetch settings (16 MiB, 1 MiB/partition, 2,000)"),
    ("drain, no CRC", "drain, uploader fetch, no CRC check (the cheapest aiokafka drain)"),
    ("drain+batch decode", "+ one msgspec decode per fetch (structure only)"),
    ("drain+orjson.loads", "+ orjson.loads per message (a decode, no validation)"),
    ("drain+parse_event", "+ parse_event per message (full validation)"),
    ("drain+parse_upload", "+ parse_upload per message (validation, uuid, NDJSON bytes)"),
    ("drain+parse_upload+join", "+ parse_upload and the import body's join"),
    ("drain+best alternative", "best alternative design: drain + parse_event + upload rows grouped per run, "
                               "one tight loop"),
)


def floor_table(cpu_us: dict[str, float], process_us: float | None, rounds: int) -> str:
    """The uploader's CPU floor as a Markdown table (µs of CPU per event, medians of the same run)."""
    lines = [
        f"Uploader CPU per event, µs (one run, medians of {rounds} interleaved rounds; target ≤ {FLOOR_TARGET_US:g}):",
        "",
        "| what the process does per event | CPU µs/event |",
        "|---|---:|",
    ]
    for case, label in FLOOR_ROWS:
        if case in cpu_us:
            lines.append(f"| {label} | {cpu_us[case]:.2f} |")
    if process_us is not None:
        lines.append(f"| the full uploader process, after its start-up | {process_us:.2f} |")
    return "\n".join(lines)


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
    ap.add_argument("--no-uploader-process", action="store_true",
                    help="leave the full uploader process out of the uploader workload's floor table")
    args = ap.parse_args()
    tune_gc()  # as the consumer processes do
    work_dir = scratch_dir("bench-ceiling-")
    # the run's broker (RUNSTREAM_KAFKA_BOOTSTRAP) or its own, stopped in the finally below
    broker = contextlib.ExitStack()
    bootstrap = broker.enter_context(kafka_bootstrap(work_dir / "kafka"))
    out: dict[str, Any] = {"events": args.events, "rounds": args.rounds}
    try:
        for name, (kind, values) in workloads(args.events).items():
            if args.workload and name not in args.workload:
                continue
            topic = f"bench-ceiling-{name}-{int(time.time())}"
            await create_topics(bootstrap, [topic], partitions=6)
            await produce(bootstrap, topic, values)
            # case -> (work, consumer options, max_records per getmany)
            per_event: Work = lambda raw, kind=kind: parse_event(kind, raw, max_bytes=1_048_576)  # noqa: E731
            cases: dict[str, tuple[Work, dict[str, Any] | None, int]] = {
                "drain": (None, None, 5000),
                "drain+orjson.loads": (orjson.loads, None, 5000),
                "drain+parse_event": (per_event, None, 5000),
            }
            process = name == "uploader" and not args.no_uploader_process
            if name == "uploader":
                cases = {
                    "drain": cases["drain"],
                    "drain, uploader fetch": (None, UPLOADER_FETCH, UPLOADER_MAX_RECORDS),
                    "drain, no CRC": (None, {**UPLOADER_FETCH, "check_crcs": False}, UPLOADER_MAX_RECORDS),
                    "drain+batch decode": (_batch_decode, UPLOADER_FETCH, UPLOADER_MAX_RECORDS),
                    "drain+orjson.loads": cases["drain+orjson.loads"],
                    "drain+parse_event": cases["drain+parse_event"],
                    "drain+parse_upload": (lambda raw: parse_upload("prediction", raw, max_bytes=1_048_576),
                                           UPLOADER_FETCH, UPLOADER_MAX_RECORDS),
                    "drain+parse_upload+join": (_upload_join, UPLOADER_FETCH, UPLOADER_MAX_RECORDS),
                    "drain+best alternative": (_best_alternative, UPLOADER_FETCH, UPLOADER_MAX_RECORDS),
                }
                if process:
                    dlq = f"{topic}-dlq"
                    await create_topics(bootstrap, [dlq], partitions=1)
            rates: dict[str, list[float]] = {c: [] for c in cases}
            cpus: dict[str, list[float]] = {c: [] for c in cases}
            proc_cpus: list[float] = []
            for rnd in range(args.rounds):
                for case, (work, options, max_records) in cases.items():
                    rate, cpu_us = await consume(bootstrap, topic, len(values), work, options, max_records)
                    rates[case].append(rate)
                    cpus[case].append(cpu_us)
                if process:
                    r = await throughput_once(bootstrap, topic, len(values), work_dir, ROOT,
                                              f"bench-ceiling-up-{int(time.time())}-{rnd}", dlq, None)
                    proc_cpus.append(r["up_work_cpu_us"])
            base = statistics.median(rates["drain"])
            for case, rs in rates.items():
                med = statistics.median(rs)
                cpu = statistics.median(cpus[case])
                out[f"{name}.{case}.per_s"] = med
                out[f"{name}.{case}.ratio"] = med / base
                out[f"{name}.{case}.cpu_us"] = cpu
                print(f"{name:<10} {case:<24} {med:>10,.0f} events/s  {med / base:6.1%} of drain  "
                      f"{cpu:5.2f} us CPU/event (rounds: {', '.join(f'{r:,.0f}' for r in rs)})")
            if name == "uploader":
                if proc_cpus:
                    out["uploader.process.cpu_us"] = statistics.median(proc_cpus)
                print(floor_table({c: statistics.median(v) for c, v in cpus.items()},
                                  statistics.median(proc_cpus) if proc_cpus else None, args.rounds))
        if args.json:
            print(json.dumps(out))
    finally:
        broker.close()


if __name__ == "__main__":
    asyncio.run(main())
