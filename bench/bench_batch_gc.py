"""The aggregator's batch GC policy on and off, same process, same topic, interleaved rounds.

    .venv/bin/python bench/bench_batch_gc.py [--events 40000] [--rounds 3] [--json]

Uses RUNSTREAM_KAFKA_BOOTSTRAP when set, else starts its own dev broker (bench/_harness.py). Tunes the
GC as ``runstream run`` does, pre-produces the aggregator bench workload (bench_aggregator.produce)
and runs the real Aggregator over it (bench_aggregator.aggregator_rate: SQLite, commit interval 1 s)
with service.gc_tuning.BatchGc on and off in alternating order; before each round a full collection
clears what the previous round left. Reports per round the rate, the process CPU and the collector's
pauses, and the medians' ratio on / off.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import kafka_bootstrap
from bench_aggregator import aggregator_rate, end_total, produce

import consumers.aggregator as aggregator_module
from service.gc_tuning import tune_gc
from service.kafka import create_topics


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=40_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tune_gc()
    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-gc-"))
    try:
        with kafka_bootstrap(tmp / "kafka") as bootstrap:
            await run_rounds(args, bootstrap, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def run_rounds(args: argparse.Namespace, bootstrap: str, tmp: Path) -> None:
    topic = f"bench-batch-gc-{int(time.time())}"
    await create_topics(bootstrap, [topic], partitions=6)
    await produce(bootstrap, topic, args.events)
    ends = await end_total(bootstrap, topic)
    rates: dict[str, list[float]] = {"on": [], "off": []}
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    for r in range(args.rounds):
        for case in ("on", "off") if r % 2 == 0 else ("off", "on"):
            # the Aggregator takes the policy where the entry point tuned the collector
            aggregator_module.tuned = (lambda: True) if case == "on" else (lambda: False)  # type: ignore[attr-defined]
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            rdir = tmp / f"{case}{r}"
            rdir.mkdir()
            c0 = time.process_time()
            rate, extra = await aggregator_rate(bootstrap, topic, ends, rdir)
            cpu_s = time.process_time() - c0
            rates[case].append(rate)
            cpu[case].append(cpu_s)
            print(
                f"round {r + 1} batch GC {case}: {rate:,.0f} events/s, CPU {cpu_s:.2f} s, "
                f"GC pauses {extra['gc_s']:.2f} s, elapsed {extra['elapsed_s']:.2f} s",
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in rates.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    out: dict[str, Any] = {
        "events": sum(ends.values()),
        "rounds": args.rounds,
        "on_per_s": med["on"],
        "off_per_s": med["off"],
        "ratio_on_to_off": med["on"] / med["off"],
        "cpu_on_s": med_cpu["on"],
        "cpu_off_s": med_cpu["off"],
        "rates": rates,
    }
    print(
        f"batch GC on {med['on']:,.0f}/s vs off {med['off']:,.0f}/s = {out['ratio_on_to_off']:.2f}x; "
        f"CPU {med_cpu['on']:.2f} s vs {med_cpu['off']:.2f} s"
    )
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
