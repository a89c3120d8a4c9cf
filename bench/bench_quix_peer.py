"""The aggregator against a Quix Streams peer doing the same state work, on one pre-produced topic.

    .venv/bin/python bench/bench_quix_peer.py [--events 100000] [--rounds 2] [--json]

Needs ``.venv-quix`` (``make bench`` creates it: ``pip install --group bench-quix``). Uses
RUNSTREAM_KAFKA_BOOTSTRAP when set, else starts the dev broker (devstack.kafka_broker).

1. Pre-produces the aggregator bench workload (bench_aggregator.produce: 12 model runs, 10k data
   rows, 1–5 metrics per event, five aggregations, three granularities, ~10 % confidence-keyed)
   to a 6-partition topic, keyed by model run.
2. Round by round, in alternating order: the raw aiokafka drain; the real Aggregator (SQLite,
   durable state, commit interval 1 s; clock from its first batch until the store's offsets
   reach the topic end); the Quix Streams application of bench/quix_peer_app.py (RocksDB state
   with changelog topics, exactly-once, commit interval 1 s; clock from its first message
   until it stopped with its state committed). Each round uses new consumer groups and stores.
3. Verifies the peer against the engine: every per-run aggregate the peer ended with (count and
   value, 1e-6 relative: the peer sums floats, the engine exact fixed point) equals the one in
   the aggregator's store, and neither has one the other lacks.

Reports the median rate of each and the ratios aggregator / peer and aggregator / drain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import kafka_bootstrap, scratch_dir
from bench_aggregator import aggregator_rate, end_total, produce, raw_drain

from service.kafka import create_topics
from service.state import SqlStateBackend

ROOT = Path(__file__).resolve().parents[1]
QUIX_PYTHON = ROOT / ".venv-quix" / "bin" / "python"


def peer_value(a: list[Any], aggregation: str) -> Any:
    n, zeros, s = a[0], a[1], a[2]
    if aggregation == "CONFUSION_MATRIX":
        return tuple(a[3:7])
    if aggregation == "ARITHMETIC_MEAN":
        return s / n
    if aggregation == "SUM":
        return s
    if zeros:
        return 0.0
    return math.exp(s / n) if aggregation == "GEOMETRIC_MEAN" else n / s


def compare(store_path: Path, peer_aggs: dict[str, dict[str, list[Any]]]) -> list[str]:
    """Differences between the peer's per-run aggregates and the aggregator's store (empty: equal)."""
    backend = SqlStateBackend.sqlite(store_path)
    problems: list[str] = []
    try:
        runs = sorted({r for r, _t in backend.list_runs()} | set(peer_aggs))
        for run in runs:
            defs = backend.metric_defs(run)
            ours = {f"{m}|{ck}|{lvl}|{f}|{s}": a for m, ck, lvl, f, s, a in backend.run_aggs(run)}
            theirs = {k: a for k, a in peer_aggs.get(run, {}).items() if a[0] > 0}
            if set(ours) != set(theirs):
                problems.append(f"{run}: aggregates only in store {sorted(set(ours) - set(theirs))[:5]}, "
                                f"only in peer {sorted(set(theirs) - set(ours))[:5]}")
                continue
            for k, a in ours.items():
                aggregation = defs[k.split("|")[0]]
                want, got = a.result(aggregation), peer_value(theirs[k], aggregation)
                if a.n != theirs[k][0]:
                    problems.append(f"{run} {k}: count {a.n} in store, {theirs[k][0]} in peer")
                elif isinstance(want, tuple):
                    if tuple(want) != tuple(got):
                        problems.append(f"{run} {k}: {want} in store, {got} in peer")
                elif not math.isclose(float(want or 0.0), float(got), rel_tol=1e-6, abs_tol=1e-9):
                    problems.append(f"{run} {k}: {want!r} in store, {got!r} in peer")
    finally:
        backend.close()
    return problems


async def quix_round(bootstrap: str, topic: str, total: int, tmp: Path) -> dict[str, Any]:
    out = tmp / "quix-out.json"
    proc = await asyncio.create_subprocess_exec(
        str(QUIX_PYTHON),
        str(ROOT / "bench" / "quix_peer_app.py"),
        bootstrap,
        topic,
        str(total),
        str(out),
        str(tmp / "quix-state"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"quix peer failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print one JSON object with every figure as the last line")
    args = ap.parse_args()
    if not QUIX_PYTHON.exists():
        raise SystemExit(f"{QUIX_PYTHON} is missing: python3 -m venv .venv-quix && "
                         ".venv-quix/bin/pip install --group bench-quix (make bench does this)")
    from service.gc_tuning import tune_gc

    tune_gc()  # what runstream run does before starting the consumers
    tmp = scratch_dir("bench-quix-")
    # the run's broker (RUNSTREAM_KAFKA_BOOTSTRAP) or its own, stopped in the finally below
    broker = contextlib.ExitStack()
    bootstrap = broker.enter_context(kafka_bootstrap(tmp / "kafka"))
    try:
        topic = f"bench-quix-{int(time.time())}"
        await create_topics(bootstrap, [topic], partitions=6)
        await produce(bootstrap, topic, args.events)
        ends = await end_total(bootstrap, topic)
        total = sum(ends.values())
        rates: dict[str, list[float]] = {"drain": [], "aggregator": [], "quix": []}
        problems: list[str] = []
        for r in range(args.rounds):
            rdir = tmp / f"round{r}"
            rdir.mkdir()
            order = ["drain", "aggregator", "quix"] if r % 2 == 0 else ["quix", "aggregator", "drain"]
            peer: dict[str, Any] = {}
            for case in order:
                if case == "drain":
                    rates["drain"].append(await raw_drain(bootstrap, topic, total))
                elif case == "aggregator":
                    rate, _extra = await aggregator_rate(bootstrap, topic, ends, rdir)
                    rates["aggregator"].append(rate)
                else:
                    peer = await quix_round(bootstrap, topic, total, rdir)
                    rates["quix"].append(peer["rate"])
                print(f"round {r + 1} {case}: {rates[case][-1]:,.0f} events/s", flush=True)
            found = compare(rdir / "bench-state.sqlite3", peer["aggs"])
            problems += found
            n_aggs = sum(len(v) for v in peer["aggs"].values())
            print(f"round {r + 1} verify: {n_aggs} per-run aggregates, {len(found)} differences", flush=True)
        med = {k: statistics.median(v) for k, v in rates.items()}
        out = {
            "events": total,
            "rounds": args.rounds,
            "raw_drain_per_s": med["drain"],
            "aggregator_per_s": med["aggregator"],
            "quix_peer_per_s": med["quix"],
            "ratio_aggregator_to_quix": med["aggregator"] / med["quix"],
            "ratio_aggregator_to_drain": med["aggregator"] / med["drain"],
            "verified": not problems,
            "rates": rates,
        }
        print(
            f"events={total} drain={med['drain']:,.0f}/s aggregator={med['aggregator']:,.0f}/s "
            f"quix_peer={med['quix']:,.0f}/s aggregator/quix={out['ratio_aggregator_to_quix']:.2f}x "
            f"aggregator/drain={out['ratio_aggregator_to_drain']:.1%} verified={not problems}"
        )
        for p in problems[:20]:
            print("DIFF", p)
        if args.json:
            print(json.dumps(out))
        if problems:
            raise SystemExit("the Quix peer and the aggregator disagree")
    finally:
        broker.close()


if __name__ == "__main__":
    asyncio.run(main())
