"""The drill: one reproducible fault run of the whole system, with every event accounted for.

    .venv/bin/python -m bench.drill [--events N] [--rate EPS] [--seed S] [--short] [--report PATH]

Runs natively: the dev broker (devstack.kafka_broker, 6 partitions per input topic), the local
Labelbox API (``runstream local-labelbox`` subprocess, seeded), 2 uploader and 2 aggregator
processes (``python -m runstream run --role ...``) on a private PostgreSQL (or a fresh database on
``RUNSTREAM_TEST_POSTGRES_DSN``). It produces the events of bench/drill_events.py at a sustained
rate, 1 % poison of every kind, while a seeded scenario kill -9s uploaders and aggregators,
restarts the broker keeping its data, makes the Labelbox API fail (503 window, 429 window, a
failed import) and adds/removes a third uploader (rebalances). Then it accounts for every event:

- each valid event stored in the local Labelbox API (by uuid / metric upsert key, last value wins);
- each poison event in the DLQ with the right class, per (consumer group, source offset);
- aggregates equal to a from-scratch recomputation over the log read back in offset order;
- committed offsets = end offsets for both groups (uploader in Kafka; aggregator in its store and
  mirrored to Kafka);
- RSS of every process sampled every second within bounds (uploader < 300 MB, aggregator < 400 MB).

Exits 1 on any discrepancy. The working directory (logs of every process) is kept on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.table import Table

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.drill_events import POISON, DrillStream, Produced, RunReference, diff, digest, flatten_api, make_catalog
from bench.drill_procs import PrivatePostgres, RssSampler, ServiceProcess, free_port, fresh_database
from consumers.dlq.headers import DlqHeaders
from devstack.kafka_broker import DevKafka
from service.state import SqlStateBackend

API_KEY = "drill-api-key-0123456789"
ADMIN = "drill-admin"
TOPICS = {"prediction": "runstream.predictions", "metric": "runstream.metrics", "label": "runstream.labels"}
DLQ_TOPIC = "runstream.dlq"
GROUPS = {"uploader": "runstream-uploader", "aggregator": "runstream-aggregator"}
PARTITIONS = 6
RSS_BOUNDS_MB = {"uploader": 300.0, "aggregator": 400.0}
# Poison injected by the drill itself rather than the stream: a ~1.6 MB metric event sent
# gzip-compressed (it passes the broker's 1 MiB limit compressed, and is too_large for the service).
EXTRA_POISON: dict[str, tuple[str, str, str]] = {"oversized_compressed": ("metric", "uploader", "too_large")}
ALL_POISON = POISON | EXTRA_POISON
console = Console(highlight=False)


@dataclass
class Plan:
    events: int
    rate: float
    seed: int
    short: bool
    runs: int = 12
    rows_per_run: int = 400
    uploader_kills: int = 5
    aggregator_kills: int = 3
    broker_restarts: int = 2
    fault_window_s: float = 30.0
    drain_timeout_s: float = 900.0
    strict_dlq: bool = False
    compressed_oversized: int = 3  # how many 1.6 MB gzip-compressed metric events
    outage_sigterm: bool = True  # SIGTERM an uploader and an aggregator while the broker is down

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> Plan:
        if a.short:
            return cls(events=a.events or 20_000, rate=a.rate or 500.0, seed=a.seed, short=True, runs=6,
                       rows_per_run=200, uploader_kills=1, aggregator_kills=1, broker_restarts=1,
                       fault_window_s=6.0, drain_timeout_s=240.0, compressed_oversized=2)  # fmt: skip
        return cls(events=a.events or 1_000_000, rate=a.rate or 3_000.0, seed=a.seed, short=False)


@dataclass
class Check:
    name: str
    expected: str
    got: str
    ok: bool
    detail: list[str] = field(default_factory=list)


@dataclass
class Drill:
    plan: Plan
    work: Path
    kafka: DevKafka | None = None
    dsn: str = ""
    lb_port: int = 0
    procs: dict[str, ServiceProcess] = field(default_factory=dict)
    expected_down: set[str] = field(default_factory=set)
    unexpected_exits: list[str] = field(default_factory=list)
    rss: RssSampler = field(default_factory=RssSampler)
    poison_digests: dict[bytes, str] = field(default_factory=dict)
    produced: int = 0
    producer_resends: int = 0
    produce_seconds: float = 0.0
    actions: list[tuple[float, str]] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)
    broker_busy: bool = False
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    outage_exits: list[str] = field(default_factory=list)  # SIGTERM during a broker outage: name, code, s
    outage_exit_bad: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ helpers
    def log(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f}s] {msg}"
        self.actions.append((time.monotonic() - self.t0, msg))
        console.print(line)

    @property
    def bootstrap(self) -> str:
        assert self.kafka is not None
        return self.kafka.bootstrap

    @property
    def lb_url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    def base_env(self) -> dict[str, str]:
        return {
            "RUNSTREAM_KAFKA_BOOTSTRAP": self.bootstrap,
            "RUNSTREAM_MAX_MESSAGE_BYTES": "65536",
        }

    def make_uploader(self, name: str) -> ServiceProcess:
        env = self.base_env() | {
            "RUNSTREAM_LABELBOX_URL": f"{self.lb_url}/graphql",
            "RUNSTREAM_LABELBOX_API_KEY": API_KEY,
            "RUNSTREAM_RETRY_INITIAL_S": "0.2",
            "RUNSTREAM_RETRY_MAX_S": "5",
            "RUNSTREAM_SHUTDOWN_GRACE_S": "20",
            "RUNSTREAM_HTTP_PORT": str(free_port()),
            # Stable per replica: a restarted uploader fences its killed predecessor's open transaction.
            "RUNSTREAM_TRANSACTIONAL_ID": f"drill-{name}",
        }
        return ServiceProcess(name, "uploader", ["run", "--role", "uploader"], env, self.work / f"{name}.log")

    def make_aggregator(self, name: str) -> ServiceProcess:
        env = self.base_env() | {
            "RUNSTREAM_STATE_BACKEND": "postgres",
            "RUNSTREAM_STATE_POSTGRES_DSN": self.dsn,
            "RUNSTREAM_STATE_COMMIT_INTERVAL_MS": "1000",
            "RUNSTREAM_HTTP_PORT": str(free_port()),
        }
        return ServiceProcess(name, "aggregator", ["run", "--role", "aggregator"], env, self.work / f"{name}.log")

    # ------------------------------------------------------------------ setup
    async def create_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(t, PARTITIONS, 1) for t in TOPICS.values()] + [NewTopic(DLQ_TOPIC, 1, 1)]
            )
        finally:
            await admin.close()

    async def start_labelbox(self) -> None:
        self.lb_port = free_port()
        args = ["local-labelbox", "--port", str(self.lb_port), "--db", str(self.work / "labelbox.sqlite3"),
                "--api-key", API_KEY, "--admin-token", ADMIN]  # fmt: skip
        p = ServiceProcess("labelbox", "labelbox", args, {}, self.work / "labelbox.log")
        p.start()
        self.procs["labelbox"] = p
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as s:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"{self.lb_url}/admin/faults") as r:
                        if r.status == 200:
                            break
                if time.monotonic() > deadline or not p.alive():
                    raise RuntimeError("local Labelbox API did not come up; see " + str(p.log))
                await asyncio.sleep(0.2)
            seed = make_catalog(self.plan.seed, self.plan.runs, self.plan.rows_per_run).seed_json()
            for path, key in (("data-rows", "dataRows"), ("model-runs", "modelRuns")):
                async with s.post(f"{self.lb_url}/admin/{path}", json={key: seed[key]}) as r:
                    assert r.status == 200, await r.text()

    async def admin(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with (
            aiohttp.ClientSession(headers=headers) as s,
            s.request(method, f"{self.lb_url}/admin/{path}", json=body) as r,
        ):
            assert r.status == 200, await r.text()
            return await r.json()

    # ------------------------------------------------------------------ producing
    async def produce(self) -> None:
        plan = self.plan
        catalog = make_catalog(plan.seed, plan.runs, plan.rows_per_run)
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True,
                                    linger_ms=20, request_timeout_ms=30_000, max_request_size=1_048_576)  # fmt: skip
        await producer.start()
        big = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True,
                               compression_type="gzip", max_request_size=4 * 1_048_576)  # fmt: skip
        await big.start()
        n_big = plan.compressed_oversized
        big_at = {int(plan.events * (i + 1) / (n_big + 1)) for i in range(n_big)}
        pending: list[tuple[asyncio.Future[Any], Produced]] = []
        start = time.monotonic()

        async def send_big(n: int) -> None:
            run = catalog.runs[n % len(catalog.runs)]
            rows = [{"dataRow": {"id": catalog.rows[run][i % len(catalog.rows[run])][0]},
                     "metricName": f"big_{i}", "metricValue": 0.5} for i in range(23_000)]  # fmt: skip
            value = orjson.dumps({"model_run_id": run, "metrics": rows, "seq": n})
            self.poison_digests[digest(value)] = "oversized_compressed"
            while True:
                try:
                    await big.send_and_wait(TOPICS["metric"], value, key=run.encode())
                    self.log(f"producer: sent a {len(value) / 1e6:.1f} MB metric event gzip-compressed")
                    return
                except KafkaError as exc:
                    self.log(f"producer: big send failed ({exc!r}); retrying")
                    await asyncio.sleep(1)

        async def settle(block: bool) -> None:
            nonlocal pending
            if block and pending:
                await asyncio.wait([f for f, _ in pending])
            keep: list[tuple[asyncio.Future[Any], Produced]] = []
            retry: list[Produced] = []
            for fut, msg in pending:
                if not fut.done():
                    keep.append((fut, msg))
                elif fut.exception() is not None:
                    retry.append(msg)
            pending = keep
            for msg in retry:  # a failed send may still have been written: the read-back decides
                self.producer_resends += 1
                await send(msg)

        async def send(msg: Produced) -> None:
            while True:
                try:
                    fut = await producer.send(TOPICS[msg.kind], msg.value, key=msg.run.encode())
                    pending.append((fut, msg))
                    return
                except KafkaError as exc:
                    self.log(f"producer: send failed ({exc!r}); retrying")
                    await asyncio.sleep(1)

        try:
            for msg in DrillStream(catalog, plan.events):
                if self.produced in big_at:
                    await send_big(self.produced)
                if msg.poison is not None:
                    self.poison_digests[digest(msg.value)] = msg.poison
                await send(msg)
                self.produced += 1
                if self.produced % 500 == 0:
                    await settle(block=False)
                    ahead = self.produced / plan.rate - (time.monotonic() - start)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            await settle(block=True)
            while pending:
                await settle(block=True)
            await producer.flush()
        finally:
            await producer.stop()
            await big.stop()
        self.produce_seconds = time.monotonic() - start
        self.log(
            f"producer: {self.produced:,} events in {self.produce_seconds:.0f} s "
            f"({self.produced / self.produce_seconds:,.0f} events/s), {self.producer_resends} re-sends"
        )

    # ------------------------------------------------------------------ scenario
    def schedule(self) -> list[tuple[float, str, str]]:
        """(seconds after the start of production, action, target), seeded."""
        p = self.plan
        rnd = random.Random(f"drill-scenario/{p.seed}")
        t = p.events / p.rate
        out: list[tuple[float, str, str]] = []
        for _ in range(p.uploader_kills):
            at = rnd.uniform(0.08 * t, 0.85 * t)
            out.append((at, "kill", rnd.choice(["u0", "u1"])))
        for _ in range(p.aggregator_kills):
            at = rnd.uniform(0.08 * t, 0.85 * t)
            out.append((at, "kill", rnd.choice(["a0", "a1"])))
        for i in range(p.broker_restarts):
            at = (i + 1) / (p.broker_restarts + 1) * t * 0.8 + rnd.uniform(-0.04, 0.04) * t
            out.append((at, "broker_restart", "broker"))
        f0 = 0.15 * t
        w = p.fault_window_s
        out += [
            (f0, "fault_503_on", "labelbox"),
            (f0 + w, "fault_429_on", "labelbox"),
            (f0 + 2 * w, "faults_off", "labelbox"),
            (f0 + 2 * w + 1, "fault_import_failed", "labelbox"),
        ]
        r0 = 0.55 * t
        out += [(r0, "add_consumer", "u2"), (r0 + max(15.0, 0.08 * t), "remove_consumer", "u2")]
        if p.outage_sigterm:
            out.append((0.7 * t, "outage_sigterm", "uploader,aggregator"))
        return sorted(out)

    async def run_scenario(self, started: float) -> None:
        """Each action at its own time (a broker restart does not delay a fault window's end)."""

        async def at_time(at: float, action: str, target: str) -> None:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            await self.do(action, target)

        await asyncio.gather(*(at_time(*a) for a in self.schedule()))

    async def do(self, action: str, target: str) -> None:
        if action == "kill":
            async with self.locks.setdefault(target, asyncio.Lock()):  # kills of one process never overlap
                proc = self.procs[target]
                self.expected_down.add(target)
                proc.kill9()
                self.log(f"kill -9 {target} (pid was running: start #{proc.starts})")
                await asyncio.sleep(random.Random(f"{target}/{proc.kills}").uniform(1.0, 3.0))
                proc.start()
                self.expected_down.discard(target)
                self.log(f"restarted {target}")
        elif action == "broker_restart":
            assert self.kafka is not None
            await self.locks.setdefault("broker", asyncio.Lock()).acquire()  # never overlaps the outage
            self.broker_busy = True
            self.log("broker: stopping (keeping its data dir and ports)")
            await asyncio.to_thread(self.kafka.stop)
            await asyncio.sleep(2)
            await asyncio.to_thread(self.kafka.start)
            self.broker_busy = False
            self.locks["broker"].release()
            self.log("broker: started again")
        elif action == "outage_sigterm":
            # The member of each role restarted least often: one that is running, not starting up.
            names = [min((n for n in self.procs if self.procs[n].role == role and n != "u2"),
                         key=lambda n: (self.procs[n].starts, n)) for role in target.split(",")]
            await self.outage_sigterm(names)
        elif action == "fault_503_on":
            await self.admin("POST", "faults", {"kind": "http_error", "status": 503, "fraction": 1.0})
            self.log(f"labelbox: every /graphql request answers 503 for {self.plan.fault_window_s:.0f} s")
        elif action == "fault_429_on":
            await self.admin("DELETE", "faults")
            await self.admin("POST", "faults", {"kind": "rate_limit", "retryAfter": 2, "fraction": 1.0})
            self.log(
                f"labelbox: every /graphql request answers 429 Retry-After: 2 for {self.plan.fault_window_s:.0f} s"
            )
        elif action == "faults_off":
            await self.admin("DELETE", "faults")
            self.log("labelbox: faults cleared")
        elif action == "fault_import_failed":
            await self.admin("POST", "faults", {"kind": "import_failed", "count": 1})
            self.log("labelbox: the next import ends FAILED")
        elif action == "add_consumer":
            self.procs[target] = self.make_uploader(target)
            self.procs[target].start()
            self.log(f"rebalance: started a third uploader {target}")
        elif action == "remove_consumer":
            self.expected_down.add(target)
            code = await asyncio.to_thread(self.procs[target].stop)
            self.log(f"rebalance: stopped {target} (exit {code})")
            if code != 0:
                self.unexpected_exits.append(f"{target} exited {code} on SIGTERM")

    async def wait_ready(self, names: list[str], timeout_s: float) -> None:
        """Until each process answers /readyz 200 (consuming), or the timeout."""
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as http:
            for n in names:
                url = f"http://127.0.0.1:{self.procs[n].env['RUNSTREAM_HTTP_PORT']}/readyz"
                while time.monotonic() < deadline:
                    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                        async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                            if r.status == 200:
                                break
                    await asyncio.sleep(0.5)

    async def outage_sigterm(self, names: list[str]) -> None:
        """Broker down, then SIGTERM: each process must exit 0 within its grace period + a few seconds."""
        assert self.kafka is not None
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.locks.setdefault("broker", asyncio.Lock()))
            for n in names:
                await stack.enter_async_context(self.locks.setdefault(n, asyncio.Lock()))
            await self.wait_ready(names, 30.0)
            self.broker_busy = True
            self.expected_down.update(names)
            self.log(f"broker: stopping for an outage; then SIGTERM {', '.join(names)}")
            await asyncio.to_thread(self.kafka.stop)
            await asyncio.sleep(3)

            async def term(n: str) -> None:
                proc = self.procs[n]
                grace = float(proc.env.get("RUNSTREAM_SHUTDOWN_GRACE_S", "30"))
                was_running = proc.alive()
                t0 = time.monotonic()
                code = await asyncio.to_thread(proc.stop, grace + 30)
                took = time.monotonic() - t0
                self.outage_exits.append(f"{n}: exit {code} in {took:.1f} s (grace {grace:.0f} s)"
                                         + ("" if was_running else " [had already exited]"))
                if code != 0 or took > grace + 8 or not was_running:
                    self.outage_exit_bad.append(self.outage_exits[-1])
                self.log(f"SIGTERM during the outage: {self.outage_exits[-1]}")

            await asyncio.gather(*(term(n) for n in names))
            await asyncio.to_thread(self.kafka.start)
            self.broker_busy = False
            self.log("broker: started again after the outage")
            for n in names:
                self.procs[n].start()
                self.expected_down.discard(n)
            self.log(f"restarted {', '.join(names)}")

    # ------------------------------------------------------------------ watching
    async def watch(self, stop: asyncio.Event) -> None:
        last_status = time.monotonic()
        while not stop.is_set():
            self.rss.sample([(n, p.role, p.pid) for n, p in self.procs.items()]
                            + [("broker", "broker", self.kafka.pid if self.kafka else None)])  # fmt: skip
            for name, p in list(self.procs.items()):
                if name in self.expected_down or p.proc is None or p.alive():
                    continue
                code = p.proc.returncode
                self.unexpected_exits.append(f"{name} exited unexpectedly with {code}")
                self.log(f"[red]{name} exited unexpectedly with {code}; restarting it[/red]")
                p.start()
            if time.monotonic() - last_status > 15 and not self.broker_busy:
                last_status = time.monotonic()
                with contextlib.suppress(Exception):
                    up, ag = await asyncio.wait_for(self.lag(), 10)
                    self.log(
                        f"status: produced {self.produced:,}; lag uploader {up:,} aggregator {ag:,}; "
                        f"RSS peaks {', '.join(f'{k} {v:.0f}' for k, v in sorted(self.rss.role_peaks.items()))} MB"
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def end_offsets(self, topics: list[str]) -> dict[tuple[str, int], int]:
        c = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await c.start()
        try:
            tps = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS if t != DLQ_TOPIC else 1)]
            ends = await c.end_offsets(tps)
            return {(tp.topic, tp.partition): o for tp, o in ends.items()}
        finally:
            await c.stop()

    async def kafka_committed(self, group: str, topics: list[str]) -> dict[tuple[str, int], int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            got = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        return {(tp.topic, tp.partition): m.offset for tp, m in got.items() if tp.topic in topics and m.offset >= 0}

    def store_offsets(self, keys: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        backend = SqlStateBackend.postgres(self.dsn)
        try:
            return backend.load_offsets(GROUPS["aggregator"], keys)
        finally:
            backend.close()

    async def lag(self) -> tuple[int, int]:
        up_topics = list(TOPICS.values())
        agg_topics = [TOPICS["prediction"], TOPICS["metric"]]
        ends = await self.end_offsets(up_topics)
        up = await self.kafka_committed(GROUPS["uploader"], up_topics)
        agg = await asyncio.to_thread(self.store_offsets, [k for k in ends if k[0] in agg_topics])
        up_lag = sum(max(0, e - up.get(k, 0)) for k, e in ends.items())
        ag_lag = sum(max(0, e - agg.get(k, 0)) for k, e in ends.items() if k[0] in agg_topics)
        return up_lag, ag_lag

    async def drain(self) -> float:
        start = time.monotonic()
        while True:
            with contextlib.suppress(Exception):
                up, ag = await asyncio.wait_for(self.lag(), 20)
                if up == 0 and ag == 0:
                    return time.monotonic() - start
            if time.monotonic() - start > self.plan.drain_timeout_s:
                self.log(f"[red]drain timed out after {self.plan.drain_timeout_s:.0f} s[/red]")
                return -1.0
            await asyncio.sleep(1.0)

    # ------------------------------------------------------------------ verification
    async def read_topic(self, topics: list[str]) -> list[Any]:
        ends = await self.end_offsets(topics)
        # read_committed: the uploader writes dead letters in transactions (aborted ones are not letters)
        c = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                             max_partition_fetch_bytes=8_388_608, isolation_level="read_committed")  # fmt: skip
        await c.start()
        out: list[Any] = []
        try:
            tps = [TopicPartition(*k) for k, e in ends.items() if e > 0]
            if not tps:
                return out
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            pos = {(tp.topic, tp.partition): 0 for tp in tps}
            while any(pos[k] < ends[k] for k in pos):
                batch = await c.getmany(timeout_ms=1000, max_records=20_000)
                for recs in batch.values():
                    out.extend(recs)
                for tp in tps:  # the position passes transaction markers, which are never records
                    pos[(tp.topic, tp.partition)] = await c.position(tp)
        finally:
            await c.stop()
        out.sort(key=lambda r: (r.topic, r.partition, r.offset))
        return out

    async def verify(self, agg_url: str) -> tuple[list[Check], dict[str, Any]]:
        checks: list[Check] = []
        facts: dict[str, Any] = {}
        topic_kind = {v: k for k, v in TOPICS.items()}
        records = await self.read_topic(list(TOPICS.values()))
        facts["log_records"] = len(records)
        checks.append(Check("events in the log (read back)", f"≥ {self.produced:,} produced", f"{len(records):,}",
                            len(records) >= self.produced,
                            [f"{len(records) - self.produced} duplicate(s) from producer re-sends"]
                            if len(records) > self.produced else []))  # fmt: skip
        refs: dict[str, RunReference] = defaultdict(RunReference)
        exp_dlq: dict[tuple[str, str, int, int], tuple[str, bytes]] = {}
        exp_pred: dict[tuple[str, str], float] = {}
        exp_metric: dict[tuple[str, str, str, str], Any] = {}
        exp_members: set[tuple[str, str]] = set()
        poison_count: Counter[str] = Counter()
        valid = 0
        ref_mismatch: list[str] = []
        for r in records:
            kind = topic_kind[r.topic]
            d = digest(r.value)
            poison = self.poison_digests.get(d)
            if poison is not None:
                poison_count[poison] += 1
                _k, role, cls = ALL_POISON[poison]
                exp_dlq[(role, r.topic, r.partition, r.offset)] = (cls, d)
            else:
                valid += 1
            if poison is not None and poison not in ("aggregate_conflict", "aggregate_domain", "unknown_data_row"):
                continue
            body = orjson.loads(r.value)
            run = body["model_run_id"]
            if kind == "label":
                exp_members.update((run, x) for x in body["data_row_ids"])
                continue
            got = refs[run].apply(kind, body)
            want = POISON[poison][2] if poison in ("aggregate_conflict", "aggregate_domain") else None
            if got != want:
                ref_mismatch.append(f"{r.topic}[{r.partition}]@{r.offset}: reference says {got}, tagged {want}")
            if kind == "prediction" and poison is None:
                for row in body["predictions"]:
                    exp_pred[(run, row["uuid"])] = row["customMetrics"][0]["value"]
                    if "id" in row["dataRow"]:
                        exp_members.add((run, row["dataRow"]["id"]))
            elif kind == "metric":
                for m in body["metrics"]:
                    exp_metric[(run, m["dataRow"]["id"], m["metricName"], m.get("featureName") or "")] = m[
                        "metricValue"
                    ]
        facts["valid"] = valid
        facts["poison"] = dict(poison_count)
        kinds = ALL_POISON if self.plan.compressed_oversized else POISON
        checks.append(Check("poison kinds exercised", f"{len(kinds)}", f"{len(poison_count)}",
                            len(poison_count) == len(kinds), sorted(set(kinds) - set(poison_count))))  # fmt: skip
        checks.append(Check("generator tags = reference verdicts", "0 mismatches", f"{len(ref_mismatch)}",
                            not ref_mismatch, ref_mismatch[:10]))  # fmt: skip

        # ---- DLQ, per (group, source offset)
        dlq = await self.read_topic([DLQ_TOPIC])
        role_of = {g: r for r, g in GROUPS.items()}
        seen: Counter[tuple[str, str, int, int]] = Counter()
        wrong: list[str] = []
        unexpected: list[str] = []
        by_class: Counter[tuple[str, str]] = Counter()
        for r in dlq:
            h = DlqHeaders.from_kafka(r.headers)
            role = role_of.get(h.consumer_group, h.consumer_group)
            key = (role, h.source_topic, h.source_partition, h.source_offset)
            seen[key] += 1
            by_class[(role, h.error_class)] += 1
            expect = exp_dlq.get(key)
            if expect is None:
                unexpected.append(f"{key} {h.error_class}: {h.error_message[:160]}")
            elif expect[0] != h.error_class or expect[1] != digest(r.value):
                wrong.append(f"{key}: got {h.error_class} want {expect[0]} ({h.error_message[:120]})")
        missing = [f"{k} want {v[0]}" for k, v in exp_dlq.items() if k not in seen]
        dups = {k: n for k, n in seen.items() if n > 1}
        facts["dlq_by_class"] = {f"{r} {c}": n for (r, c), n in sorted(by_class.items())}
        facts["dlq_duplicates"] = sum(n - 1 for n in dups.values())
        checks.append(Check("poison events dead-lettered (group, offset)", f"{len(exp_dlq):,}",
                            f"{len(exp_dlq) - len(missing):,}", not missing, missing[:10]))  # fmt: skip
        checks.append(
            Check("DLQ entries with the right class and bytes", "all", f"{len(wrong)} wrong", not wrong, wrong[:10])
        )
        checks.append(Check("DLQ entries for valid events / unknown sources", "0", f"{len(unexpected)}",
                            not unexpected, unexpected[:10]))  # fmt: skip
        # The uploader writes dead letters in the transaction of its offset commit: exactly once.
        # The aggregator's aggregate.* letters are at-least-once (written before its store commit).
        up_dups = {k: n for k, n in dups.items() if k[0] == "uploader"}
        ag_dups = {k: n for k, n in dups.items() if k[0] != "uploader"}
        facts["dlq_duplicates_uploader"] = sum(n - 1 for n in up_dups.values())
        checks.append(Check("uploader DLQ: each poison message exactly once", "0 re-deliveries",
                            f"{facts['dlq_duplicates_uploader']}", not up_dups,
                            [f"{k} x{n}" for k, n in list(up_dups.items())[:10]]))  # fmt: skip
        want_dups = "0" if self.plan.strict_dlq else "reported (at-least-once)"
        checks.append(Check("aggregator DLQ re-deliveries of one (group, offset)", want_dups,
                            f"{sum(n - 1 for n in ag_dups.values())}", not (self.plan.strict_dlq and ag_dups),
                            [f"{k} x{n}" for k, n in list(ag_dups.items())[:10]]))  # fmt: skip

        # ---- Labelbox store (SQLite file of the local API, read-only)
        db = sqlite3.connect(f"file:{self.work / 'labelbox.sqlite3'}?mode=ro", uri=True)
        try:
            stored_pred = {(run, u): orjson.loads(b)["customMetrics"][0]["value"]
                           for run, u, b in db.execute("SELECT model_run_id, uuid, body FROM predictions")}  # fmt: skip
            stored_metric = {
                (run, d, n, f): orjson.loads(v)
                for run, d, n, f, v in db.execute(
                    "SELECT model_run_id, data_row_id, metric_name, feature_name, metric_value FROM metrics"
                )
            }
            members = set(db.execute("SELECT model_run_id, data_row_id FROM model_run_data_rows"))
            facts["imports_by_state"] = dict(
                db.execute("SELECT state, COUNT(*) FROM imports GROUP BY state").fetchall()
            )
        finally:
            db.close()
        miss_p = [f"{k}" for k in exp_pred if k not in stored_pred]
        extra_p = [f"{k}" for k in stored_pred if k not in exp_pred]
        stale_p = [f"{k}: stored {stored_pred[k]} want {v}" for k, v in exp_pred.items()
                   if k in stored_pred and stored_pred[k] != v]  # fmt: skip
        checks.append(Check("valid predictions stored once by uuid", f"{len(exp_pred):,}",
                            f"{len(stored_pred):,} ({len(miss_p)} missing, {len(extra_p)} extra)",
                            not miss_p and not extra_p, (miss_p + extra_p)[:10]))  # fmt: skip
        checks.append(
            Check("re-sent uuids hold the last version", "0 stale", f"{len(stale_p)}", not stale_p, stale_p[:10])
        )
        miss_m = [f"{k}" for k in exp_metric if k not in stored_metric]
        extra_m = [f"{k}" for k in stored_metric if k not in exp_metric]
        stale_m = [f"{k}: stored {stored_metric[k]} want {v}" for k, v in exp_metric.items()
                   if k in stored_metric and stored_metric[k] != v]  # fmt: skip
        checks.append(Check("metrics stored once by upsert key, last value", f"{len(exp_metric):,}",
                            f"{len(stored_metric):,} ({len(miss_m)} missing, {len(extra_m)} extra, "
                f"{len(stale_m)} stale)",
                            not (miss_m or extra_m or stale_m), (miss_m + extra_m + stale_m)[:10]))  # fmt: skip
        miss_r = [f"{k}" for k in exp_members if k not in members]
        checks.append(Check("data rows registered in their runs", f"{len(exp_members):,}",
                            f"{len(exp_members) - len(miss_r):,}", not miss_r, miss_r[:10]))  # fmt: skip
        failed_imports = facts["imports_by_state"].get("FAILED", 0)
        checks.append(Check("injected failed import happened and was re-imported", "≥ 1 FAILED import",
                            f"{failed_imports}", failed_imports >= 1))  # fmt: skip

        # ---- aggregates vs the from-scratch reference
        problems: list[str] = []
        rnd = random.Random(f"drill-rows/{self.plan.seed}")
        compared = 0
        async with aiohttp.ClientSession() as s:
            for run, ref in sorted(refs.items()):
                async with s.get(f"{agg_url}/v1/model-runs/{run}/metrics") as r:
                    doc = await r.json() if r.status == 200 else {}
                problems += [f"{run}: {p}" for p in diff(flatten_api(doc), ref.expected())]
                compared += 1
                drs = sorted({k[1] for k in ref.leaves})
                for dr in rnd.sample(drs, min(5, len(drs))):
                    async with s.post(f"{agg_url}/v1/model-runs/{run}/metrics/query", json={"data_row_ids": [dr]}) as r:
                        doc = await r.json() if r.status == 200 else {}
                    problems += [f"{run} {dr}: {p}" for p in diff(flatten_api(doc), ref.expected({dr}))]
                    compared += 1
        checks.append(Check("aggregates = from-scratch recomputation", f"{compared} documents equal",
                            f"{len(problems)} differences", not problems, problems[:10]))  # fmt: skip
        return checks, facts

    async def verify_offsets(self, stopped: bool) -> list[Check]:
        out: list[Check] = []
        up_topics = list(TOPICS.values())
        agg_topics = [TOPICS["prediction"], TOPICS["metric"]]
        ends = await self.end_offsets(up_topics)
        up = await self.kafka_committed(GROUPS["uploader"], up_topics)
        bad = [f"{k}: committed {up.get(k, 0)} end {e}" for k, e in ends.items() if up.get(k, 0) != e]
        out.append(Check("uploader: Kafka committed = end offsets", f"{len(ends)} partitions",
                         f"{len(ends) - len(bad)} equal", not bad, bad))  # fmt: skip
        agg_ends = {k: e for k, e in ends.items() if k[0] in agg_topics}
        stored = await asyncio.to_thread(self.store_offsets, list(agg_ends))
        bad = [f"{k}: stored {stored.get(k, 0)} end {e}" for k, e in agg_ends.items() if stored.get(k, 0) != e]
        out.append(Check("aggregator: stored offsets (PostgreSQL) = end", f"{len(agg_ends)} partitions",
                         f"{len(agg_ends) - len(bad)} equal", not bad, bad))  # fmt: skip
        if stopped:
            ag = await self.kafka_committed(GROUPS["aggregator"], agg_topics)
            bad = [f"{k}: committed {ag.get(k, 0)} end {e}" for k, e in agg_ends.items() if ag.get(k, 0) != e]
            out.append(Check("aggregator: Kafka mirror committed = end", f"{len(agg_ends)} partitions",
                             f"{len(agg_ends) - len(bad)} equal", not bad, bad))  # fmt: skip
        return out

    # ------------------------------------------------------------------ the run
    async def run(self) -> tuple[list[Check], dict[str, Any]]:
        plan = self.plan
        pg: PrivatePostgres | None = None
        facts: dict[str, Any] = {}
        checks: list[Check] = []
        try:
            base_dsn = os.environ.get("RUNSTREAM_TEST_POSTGRES_DSN")
            if base_dsn:
                self.dsn = await asyncio.to_thread(fresh_database, base_dsn)
            else:
                pg = PrivatePostgres()
                self.dsn = await asyncio.to_thread(pg.start)
            self.log(f"PostgreSQL state store: {self.dsn}")
            self.kafka = DevKafka(self.work / "kafka")
            await asyncio.to_thread(self.kafka.start)
            await self.create_topics()
            self.log(f"dev broker at {self.bootstrap}; topics with {PARTITIONS} partitions")
            await self.start_labelbox()
            self.log(f"local Labelbox API at {self.lb_url} (seeded {plan.runs} runs x {plan.rows_per_run} data rows)")
            for name in ("u0", "u1"):
                self.procs[name] = self.make_uploader(name)
            for name in ("a0", "a1"):
                self.procs[name] = self.make_aggregator(name)
            for name in ("u0", "u1", "a0", "a1"):
                self.procs[name].start()
            agg_url = f"http://127.0.0.1:{self.procs['a0'].env['RUNSTREAM_HTTP_PORT']}"
            await asyncio.sleep(3)
            stop_watch = asyncio.Event()
            watcher = asyncio.create_task(self.watch(stop_watch))
            started = time.monotonic()
            self.log(
                f"producing {plan.events:,} events at {plan.rate:,.0f}/s; scenario: {len(self.schedule())} actions"
            )
            producing = asyncio.create_task(self.produce())
            scenario = asyncio.create_task(self.run_scenario(started))
            await asyncio.gather(producing, scenario)
            drain_s = await self.drain()
            facts["drain_s"] = drain_s
            facts["total_s"] = time.monotonic() - started
            self.log(f"drained {f'in {drain_s:.0f} s' if drain_s >= 0 else 'NOT (timeout)'}; verifying")
            checks += await self.verify_offsets(stopped=False)
            vchecks, vfacts = await self.verify(agg_url)
            checks += vchecks
            facts |= vfacts
            stop_watch.set()
            await watcher
            exits = []
            for name, p in self.procs.items():
                if name == "labelbox" or name in self.expected_down:
                    continue
                code = await asyncio.to_thread(p.stop)
                exits.append(f"{name}: {code}")
                if code != 0:
                    self.unexpected_exits.append(f"{name} exited {code} on SIGTERM")
            checks += await self.verify_offsets(stopped=True)
            if plan.outage_sigterm:
                checks.append(Check("SIGTERM during a broker outage: exit 0 within grace + 8 s",
                                     "2 processes", f"{len(self.outage_exits) - len(self.outage_exit_bad)} ok",
                                     len(self.outage_exits) == 2 and not self.outage_exit_bad,
                                     self.outage_exits))  # fmt: skip
            checks.append(Check("no unexpected process exits; SIGTERM exits 0", "none",
                                f"{len(self.unexpected_exits)}", not self.unexpected_exits,
                                self.unexpected_exits + exits))  # fmt: skip
            for role, bound in RSS_BOUNDS_MB.items():
                peak = self.rss.role_peaks.get(role, 0.0)
                checks.append(Check(f"peak RSS {role} (sampled 1/s)", f"< {bound:.0f} MB", f"{peak:.0f} MB",
                                    0 < peak < bound,
                                    [f"{n}: {v:.0f} MB" for n, v in sorted(self.rss.peaks.items())]))  # fmt: skip
            facts["rss_peaks"] = dict(sorted(self.rss.peaks.items()))
            facts["rss_samples"] = self.rss.samples
            facts["produce_s"] = self.produce_seconds
            facts["produced"] = self.produced
            facts["producer_resends"] = self.producer_resends
            facts["kills"] = {n: p.kills for n, p in self.procs.items() if p.kills}
            facts["outage_exits"] = self.outage_exits
        finally:
            for p in self.procs.values():
                if p.alive():
                    await asyncio.to_thread(p.stop, 20)
            if self.kafka is not None:
                await asyncio.to_thread(self.kafka.stop)
            if pg is not None:
                await asyncio.to_thread(pg.stop)
        return checks, facts


def render(plan: Plan, checks: list[Check], facts: dict[str, Any], cmd: str, wall_s: float) -> tuple[Table, str]:
    ok = all(c.ok for c in checks)
    title = f"drill {'PASSED' if ok else 'FAILED'} — {cmd} — {wall_s:.0f} s"
    table = Table(title=title)
    for col in ("check", "expected", "got", "ok"):
        table.add_column(col)
    for c in checks:
        table.add_row(c.name, c.expected, c.got, "[green]yes[/green]" if c.ok else "[red]NO[/red]")
    lines = [f"### {title}", "", "| check | expected | got | ok |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {c.expected} | {c.got} | {'yes' if c.ok else '**NO**'} |" for c in checks]
    rate = facts.get("produced", 0) / facts["produce_s"] if facts.get("produce_s") else 0
    lines += [
        "",
        f"- events produced: {facts.get('produced', 0):,} ({facts.get('valid', 0):,} valid, "
        f"{sum(facts.get('poison', {}).values()):,} poison) over {plan.runs} model runs, "
        f"{PARTITIONS} partitions per topic; "
        f"target rate {plan.rate:,.0f}/s, achieved {rate:,.0f}/s over {facts.get('produce_s', 0):.0f} s "
        f"(producer re-sends after broker restarts: {facts.get('producer_resends', 0)})",
        f"- drain after the last event: {facts.get('drain_s', 0):.0f} s; production start → all offsets stored: "
        f"{facts.get('total_s', 0):.0f} s",
        f"- kill -9: {facts.get('kills', {})}; broker restarts: {plan.broker_restarts}; Labelbox 503 window "
        f"{plan.fault_window_s:.0f} s, 429 window {plan.fault_window_s:.0f} s, 1 failed import; one extra uploader "
        "added and removed",
        f"- poison by kind: {facts.get('poison', {})}",
        f"- DLQ by (group, class): {facts.get('dlq_by_class', {})}",
        f"- SIGTERM during a broker outage: {'; '.join(facts.get('outage_exits', [])) or 'not run'}",
        f"- imports by state: {facts.get('imports_by_state', {})}",
        f"- peak RSS per process (MB, {facts.get('rss_samples', 0)} samples): "
        + ", ".join(f"{k} {v:.0f}" for k, v in facts.get("rss_peaks", {}).items()),
    ]
    for c in checks:
        if not c.ok and c.detail:
            lines += ["", f"{c.name}:", *[f"    {d}" for d in c.detail[:10]]]
    return table, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.drill", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    ap.add_argument("--events", type=int, default=0, help="events to produce (default 1,000,000; --short 20,000)")
    ap.add_argument("--rate", type=float, default=0.0, help="produce rate, events/s (default 3,000; --short 500)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--short", action="store_true", help="the CI variant: 20k events, one fault of each kind")
    ap.add_argument("--report", type=Path, help="write the results as markdown here")
    ap.add_argument(
        "--strict-dlq",
        action="store_true",
        help="also fail on the aggregator's DLQ re-deliveries of one source offset (its aggregate.* letters are "
             "at-least-once; the uploader's are always checked to be exactly once)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the working directory (logs) even on success")
    args = ap.parse_args(argv)
    plan = Plan.from_args(args)
    plan.strict_dlq = args.strict_dlq
    work = Path(tempfile.mkdtemp(prefix="runstream-drill."))
    cmd = "python -m bench.drill " + " ".join(argv if argv is not None else sys.argv[1:])
    console.print(f"drill working directory (process logs): {work}")
    drill = Drill(plan, work)
    start = time.monotonic()
    try:
        checks, facts = asyncio.run(drill.run())
    except Exception as exc:
        console.print_exception()
        checks, facts = [Check("drill ran to completion", "yes", f"{type(exc).__name__}: {exc}", False)], {}
    wall = time.monotonic() - start
    table, md = render(plan, checks, facts, cmd.strip(), wall)
    console.print(table)
    console.print(md.split("\n", 4 + len(checks))[-1])
    ok = all(c.ok for c in checks)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(md, encoding="utf-8")
    if ok and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        console.print(f"logs kept in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
