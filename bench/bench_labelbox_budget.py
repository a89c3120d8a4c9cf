"""Labelbox's request budget: what a model run that does not exist costs, and what it does to a healthy one.

    .venv/bin/python bench/bench_labelbox_budget.py [--missing-events 20000] [--healthy-rate 200]
        [--missing-rate 2000] [--seconds 12] [--rounds 2] [--compare LABEL=CHECKOUT] [--json]

1. Requests per dead-lettered message: N prediction events for a model run id that does not exist
   (pre-produced, 6 partitions), one uploader process (default settings) against a fresh local
   Labelbox API process; the API counts every /graphql request (a zero-latency fault rule whose
   remaining count is read back). Reported: requests for the first batch, and requests per message
   for everything after it (goal <= 0.01). Baseline in the same run: the same with
   RUNSTREAM_MODEL_RUN_REJECT_TTL_S=0 (each batch settled in one call, nothing remembered), and with
   ``--compare before=PATH`` the uploader of another checkout (e.g. ``git archive`` of the commit
   before this change: it bisects every batch, about 2 requests per message).
2. Healthy-run latency: one uploader, a healthy model run produced at ``--healthy-rate`` events/s,
   alone, and next to a second run with a missing id produced at ``--missing-rate`` events/s;
   latency = produce -> the run's stored prediction count reaches the event (polled every 50 ms).
   Rounds interleave alone / with; reported: median p99 of each and their ratio (goal <= 1.5),
   plus the Labelbox requests per second in both (the missing run's extra cost).

Uses RUNSTREAM_KAFKA_BOOTSTRAP when set, else starts the dev broker. Prints text lines and a JSON
summary last (``--json``: only the JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_uploader as bu  # noqa: E402  (the local API process, uploader processes, events)
from _harness import kafka_bootstrap, scratch_dir  # noqa: E402

from service.kafka import create_topics  # noqa: E402

HEALTHY = "bench-healthy-run"
MISSING = "bench-missing-run"  # never created: a typo in a producer's configuration
COUNTED = 100_000_000
QUIET = False


def say(text: str) -> None:
    if not QUIET:
        print(text, flush=True)


class Counter:
    """The local API's own count of /graphql requests (a fault rule consumed once per request)."""

    def __init__(self, api: bu.Api) -> None:
        self.api = api
        self.rule_id: int | None = None

    async def start(self) -> None:
        rule = await self.api.call("POST", "/faults", {"kind": "latency", "latencyMs": 0, "count": COUNTED})
        self.rule_id = int(rule["id"])

    async def seen(self) -> int:
        for r in (await self.api.call("GET", "/faults"))["faults"]:
            if r["id"] == self.rule_id:
                return COUNTED - int(r["remaining"])
        return COUNTED


async def end_offset_sum(consumer: AIOKafkaConsumer, topic: str) -> int:
    parts = consumer.partitions_for_topic(topic) or {0}
    ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
    return sum(ends.values())


async def produce_missing(bootstrap: str, topic: str, n: int) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=262144, acks=1)
    await p.start()
    try:
        await asyncio.gather(*[await p.send(topic, bu.event(i, MISSING), key=MISSING.encode()) for i in range(n)])
    finally:
        await p.stop()


async def requests_per_dead_letter(bootstrap: str, work: Path, n: int, label: str, root: Path,
                                   extra_env: dict[str, str], rate: float | None = None) -> dict[str, Any]:
    """``n`` messages of the missing run: pre-produced, or with ``rate`` produced while the uploader runs
    (n / rate seconds), so they arrive as many batches."""
    stamp = f"{label}-{time.time_ns()}"
    topic, dlq = f"budget-missing-{stamp}", f"budget-dlq-{stamp}"
    await create_topics(bootstrap, [topic], partitions=6)
    await create_topics(bootstrap, [dlq], partitions=1)
    if rate is None:
        await produce_missing(bootstrap, topic, n)
    (work / stamp).mkdir(parents=True)
    api = bu.Api(work / stamp)
    await api.start()
    watcher = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await watcher.start()
    try:
        await api.seed([HEALTHY])
        counter = Counter(api)
        await counter.start()
        env = bu.uploader_env(bootstrap, topic, f"budget-{stamp}", api.url, dlq, **extra_env)
        env["PYTHONPATH"] = str(root)
        t0 = time.perf_counter()
        proc = await bu.spawn_uploader(env, work / f"{stamp}.log", root=root)
        first: tuple[int, int] | None = None
        producer = None
        if rate is not None:
            await asyncio.sleep(3)  # joined the group
            producer = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--produce-missing", bootstrap, topic, str(rate), str(n / rate),
                stdout=asyncio.subprocess.PIPE)
        try:
            while True:
                dead = await end_offset_sum(watcher, dlq)
                seen = await counter.seen()
                if dead and first is None:
                    first = (dead, seen)
                if producer is not None and producer.returncode is not None and producer.stdout is not None:
                    n = int((await producer.stdout.read()).decode().split()[-1])
                    producer = None
                if dead >= n and producer is None:
                    break
                if time.perf_counter() - t0 > 600:
                    raise RuntimeError(f"{label}: only {dead} of {n} dead-lettered after 600 s")
                await asyncio.sleep(0.05)
            seconds = time.perf_counter() - t0
        finally:
            await bu.stop_proc(proc)
        total = await counter.seen()
    finally:
        await watcher.stop()
        await api.stop()
    assert first is not None
    first_dead, first_reqs = first
    after = (total - first_reqs) / max(1, n - first_dead)
    r = {"messages": n, "rate": rate, "requests": total, "per_message": total / n, "first_batch_messages": first_dead,
         "first_batch_requests": first_reqs, "after_first_per_message": after, "seconds": seconds}
    how = "pre-produced" if rate is None else f"produced at {rate:g}/s"
    say(f"[{label}] {n} messages ({how}) of a missing model run dead-lettered in {seconds:.1f} s: {total} Labelbox "
        f"requests ({total / n:.4f}/message; first batch: {first_dead} messages, {first_reqs} requests incl. "
        f"the credential check; after it: {after:.4f}/message)")
    return r


async def latency_round(bootstrap: str, work: Path, api: bu.Api, counter: Counter, *, mode: str,
                        healthy_rate: int, missing_rate: int, seconds: float) -> dict[str, Any]:
    """``mode``: alone | with (the missing run in the uploader's topic) | control (the same produce
    load into a topic nobody reads: what the machine's extra load alone does to the latency)."""
    with_missing = mode != "alone"
    stamp = f"{mode}-{time.time_ns()}"
    topic = f"budget-lat-{stamp}"
    await create_topics(bootstrap, [topic], partitions=6)
    noise_topic = topic
    if mode == "control":
        noise_topic = f"budget-unread-{stamp}"
        await create_topics(bootstrap, [noise_topic], partitions=6)
    env = bu.uploader_env(bootstrap, topic, f"budget-lat-{stamp}", api.url, f"budget-lat-dlq-{stamp}")
    before = (await api.counts([HEALTHY]))[HEALTHY]
    prof = os.environ.get("BENCH_BUDGET_PROFILE")  # a directory: cProfile of each uploader
    proc = await bu.spawn_uploader(env, work / f"uploader-{stamp}.log",
                                   profile=f"{prof}/{stamp}.prof" if prof else None)
    try:
        await asyncio.sleep(3)  # joined the group
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, acks=1)
        await p.start()
        total = int(healthy_rate * seconds)
        produced: list[float] = []
        stored_at: list[float] = []

        async def poll() -> None:
            while len(stored_at) < total:
                now = time.perf_counter()
                n = (await api.counts([HEALTHY]))[HEALTHY] - before
                while len(stored_at) < min(n, len(produced)):
                    stored_at.append(now)
                await asyncio.sleep(0.05)

        req0 = await counter.seen()
        cpu0 = bu.cpu_s(proc.pid)
        poller = asyncio.create_task(poll())
        # The missing run's events come from a process of their own, so its bursts never delay
        # the healthy run's sends (a shared producer would queue them behind the burst).
        noise = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--produce-missing", bootstrap, noise_topic, str(missing_rate), str(seconds),
            stdout=asyncio.subprocess.PIPE) if with_missing else None
        t0 = time.perf_counter()
        base = 40_000_000 + time.time_ns() % 1_000_000 * 100
        for i in range(total):
            delay = t0 + i / healthy_rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            produced.append(time.perf_counter())
            await p.send(topic, bu.event(base + i, HEALTHY), key=HEALTHY.encode())
        missing_sent = 0
        if noise is not None:
            out, _ = await noise.communicate()
            missing_sent = int(out.decode().split()[-1])
        await p.flush()
        await p.stop()
        await asyncio.wait_for(poller, 120)
        elapsed = time.perf_counter() - t0
        reqs = await counter.seen() - req0
        up_cpu = bu.cpu_s(proc.pid) - cpu0
    finally:
        await bu.stop_proc(proc)
    lat = sorted(s - q for q, s in zip(produced, stored_at, strict=True))
    p50 = statistics.median(lat)
    p99 = lat[max(0, int(len(lat) * 0.99) - 1)]
    r = {"p50": p50, "p99": p99, "max": lat[-1], "healthy_events": total, "missing_events": missing_sent,
         "requests": reqs, "requests_per_s": reqs / elapsed, "uploader_cpu_s": up_cpu,
         "uploader_cores": up_cpu / elapsed}
    title = {"alone": "alone", "with": "with a missing run", "control": "load, not consumed"}[mode]
    say(f"  {title:>20}: healthy p50 {p50 * 1000:.0f} ms, p99 "
        f"{p99 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms; {missing_sent} missing-run events; "
        f"{reqs} Labelbox requests ({reqs / elapsed:.1f}/s); uploader CPU {up_cpu / elapsed:.2f} cores")
    return r


def _variant(spec: str) -> tuple[str, Path]:
    label, _, path = spec.partition("=")
    return label, Path(path).resolve()


async def produce_at_rate(bootstrap: str, topic: str, rate: float, seconds: float) -> None:
    """``--produce-missing``: the misconfigured producer, ``rate`` events/s of the missing run."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1_048_576, acks=1)
    await p.start()
    sent = 0
    pending = []
    t0 = time.perf_counter()
    try:
        while (elapsed := time.perf_counter() - t0) < seconds:
            for i in range(sent, int(elapsed * rate)):
                pending.append(await p.send(topic, bu.event(30_000_000 + i, MISSING), key=MISSING.encode()))
                sent = i + 1
            await asyncio.sleep(0.01)
        await asyncio.gather(*pending)
    finally:
        await p.stop()
    print(sent, flush=True)


async def main() -> None:
    global QUIET
    if len(sys.argv) == 6 and sys.argv[1] == "--produce-missing":
        await produce_at_rate(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--missing-events", type=int, default=20_000)
    ap.add_argument("--baseline-events", type=int, default=2_000,
                    help="messages for the --compare variants (bisection costs ~2 requests per message)")
    ap.add_argument("--healthy-rate", type=int, default=200)
    ap.add_argument("--missing-rate", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--control", action="store_true",
                    help="also a round with the missing run's load going to a topic the uploader does not read")
    ap.add_argument("--compare", action="append", default=[], metavar="LABEL=PATH", type=_variant)
    ap.add_argument("--skip", action="append", default=[], choices=["requests", "latency"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    QUIET = args.json

    work = scratch_dir("bench-budget-")
    results: dict[str, Any] = {}
    with kafka_bootstrap(work / "kafka") as bootstrap:
        if "requests" not in args.skip:
            n, rate = args.missing_events, float(args.missing_rate)
            results["this"] = await requests_per_dead_letter(bootstrap, work, n, "this", ROOT, {}, rate)
            results["no_memory"] = await requests_per_dead_letter(
                bootstrap, work, n, "ttl0", ROOT, {"RUNSTREAM_MODEL_RUN_REJECT_TTL_S": "0"}, rate)
            results["this_preproduced"] = await requests_per_dead_letter(bootstrap, work, args.baseline_events,
                                                                         "this-pre", ROOT, {})
            for label, root in args.compare:
                results[label] = await requests_per_dead_letter(bootstrap, work, args.baseline_events, label, root,
                                                                {})
            results["requests_per_message_after_first_batch"] = results["this"]["after_first_per_message"]
        if "latency" not in args.skip:
            api = bu.Api(work / "lat")
            (work / "lat").mkdir()
            await api.start()
            try:
                await api.seed([HEALTHY])
                counter = Counter(api)
                await counter.start()
                modes = ["alone", "with", *(["control"] if args.control else [])]
                rounds: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
                for rnd in range(args.rounds):
                    say(f"[latency round {rnd + 1}] healthy run at {args.healthy_rate}/s, missing run at "
                        f"{args.missing_rate}/s, {args.seconds:g} s")
                    for mode in modes[rnd % len(modes):] + modes[:rnd % len(modes)]:  # rotate the order
                        r = await latency_round(bootstrap, work, api, counter, mode=mode,
                                                healthy_rate=args.healthy_rate, missing_rate=args.missing_rate,
                                                seconds=args.seconds)
                        rounds[mode].append(r)
            finally:
                await api.stop()
            def med(mode: str, key: str) -> float:
                return statistics.median(r[key] for r in rounds[mode])

            alone, with_m = med("alone", "p99"), med("with", "p99")
            results.update(latency_rounds=rounds, p99_alone=alone, p99_with_missing=with_m,
                           p99_ratio=with_m / alone, requests_per_s_alone=med("alone", "requests_per_s"),
                           requests_per_s_with_missing=med("with", "requests_per_s"),
                           uploader_cores_alone=med("alone", "uploader_cores"),
                           uploader_cores_with_missing=med("with", "uploader_cores"))
            say(f"healthy run p99 (median of {args.rounds}): alone {alone * 1000:.0f} ms, next to a missing run at "
                f"{args.missing_rate}/s {with_m * 1000:.0f} ms -> ratio {with_m / alone:.2f} (goal <= 1.5)")
            if args.control:
                ctl = med("control", "p99")
                results.update(p99_control=ctl, p99_ratio_control=ctl / alone)
                say(f"control: the same produce load into a topic nobody reads: p99 {ctl * 1000:.0f} ms -> ratio "
                    f"{ctl / alone:.2f} (the machine's share of the slowdown)")
        print(orjson.dumps(results).decode(), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
