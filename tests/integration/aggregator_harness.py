"""Shared harness for aggregator integration tests: random raw events, a reference model of
which messages are accepted and what leaves they leave behind, and a real aggregator process.

The reference here interprets raw event JSON itself (where customMetrics sit, replacement by
uuid, first-seen aggregation, GM/HM negatives) — independently of service.events and
service.aggregation — and recomputes values from scratch with tests/aggregate_reference.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aggregate_reference import Leaves, close, node_values, run_values
from aiokafka import AIOKafkaConsumer, TopicPartition
from hypothesis import strategies as st
from kafka_io import end_offsets
from row_uuid import row_uuid

from devstack.kafka_broker import free_port
from service.state import SqlStateBackend

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python")

METRICS = {
    "am": "ARITHMETIC_MEAN",
    "gm": "GEOMETRIC_MEAN",
    "hm": "HARMONIC_MEAN",
    "sum": "SUM",
    "cm": "CONFUSION_MATRIX",
}
ROWS = [("id", "d1"), ("id", "d2"), ("gk", "g3"), ("gk", "g4"), ("id", "d5")]
PLACES = [(None, None), ("cat", None), ("dog", None), ("cat", "tall"), ("cat", "short"), ("dog", "big")]
CONF = ["0.1", "0.5", "0.9"]


def dr_ref(kind: str, ident: str, camel: bool) -> dict[str, str]:
    if kind == "id":
        return {"id": ident}
    return {"globalKey": ident} if camel else {"global_key": ident}


@st.composite
def scalar(draw: st.DrawFn, aggregation: str) -> float:
    if aggregation in ("GEOMETRIC_MEAN", "HARMONIC_MEAN"):
        return draw(
            st.one_of(st.just(0.0), st.floats(1e-3, 1e6), st.floats(-5, -0.1))
            if draw(st.integers(0, 19)) == 0
            else st.one_of(st.just(0.0), st.floats(1e-3, 1e6))
        )
    return draw(st.one_of(st.just(0.0), st.floats(-1e6, 1e6, allow_nan=False)))


@st.composite
def metric_row(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(list(METRICS)))
    aggregation = METRICS[name]
    # Conflicts only among metric rows (one topic, ordered per run): a run's metric and prediction
    # messages sit on two topics, whose relative order Kafka does not define.
    if name in ("gm", "hm", "sum") and draw(st.integers(0, 14)) == 0:
        aggregation = draw(st.sampled_from(["ARITHMETIC_MEAN", "GEOMETRIC_MEAN", "HARMONIC_MEAN", "SUM"]))
    kind, ident = draw(st.sampled_from(ROWS))
    f, s = draw(st.sampled_from(PLACES))

    def one() -> Any:
        if aggregation == "CONFUSION_MATRIX":
            return [draw(st.integers(0, 1000)) for _ in range(4)]
        return draw(scalar(aggregation))

    if draw(st.booleans()):
        value: Any = one()
    else:
        value = {k: one() for k in draw(st.lists(st.sampled_from(CONF), min_size=2, max_size=3, unique=True))}
    camel = draw(st.booleans())
    row: dict[str, Any] = {
        ("dataRow" if camel else "data_row"): dr_ref(kind, ident, camel),
        ("metricName" if camel else "metric_name"): name,
        ("metricValue" if camel else "value"): value,
        "aggregation": aggregation,
    }
    if f is not None:
        row["featureName" if camel else "feature_name"] = f
    if s is not None:
        row["subclassName" if camel else "subclass_name"] = s
    return row


@st.composite
def custom_metrics(draw: st.DrawFn) -> list[dict[str, Any]]:
    names = draw(st.lists(st.sampled_from(["am", "cam", "cam2"]), max_size=2, unique=True))
    return [{"name": n, "value": draw(st.floats(-1e3, 1e3, allow_nan=False))} for n in names]


@st.composite
def prediction_row(draw: st.DrawFn) -> dict[str, Any]:
    kind, ident = draw(st.sampled_from(ROWS))
    row: dict[str, Any] = {
        "uuid": draw(st.sampled_from([row_uuid(t) for t in ("u1", "u2", "u3", "u4")])),
        "dataRow": dr_ref(kind, ident, True),
    }
    shape = draw(st.sampled_from(["object", "radio", "checklist"]))
    if shape == "object":
        row["name"] = draw(st.sampled_from(["cat", "dog"]))
        row["bbox"] = {"top": 1, "left": 2, "height": 3, "width": 4}
        cms = draw(custom_metrics())
        if cms:
            row["customMetrics"] = cms
    elif shape == "radio":
        row["name"] = "cat"
        ans: dict[str, Any] = {"name": draw(st.sampled_from(["tall", "short"]))}
        cms = draw(custom_metrics())
        if cms:
            ans["customMetrics"] = cms
        row["answer"] = ans
    else:
        row["name"] = "dog"
        answers = []
        for a in draw(st.lists(st.sampled_from(["big", "small"]), min_size=1, max_size=2, unique=True)):
            ans = {"name": a}
            cms = draw(custom_metrics())
            if cms:
                ans["customMetrics"] = cms
            answers.append(ans)
        row["answer"] = answers
    return row


@st.composite
def event(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    if draw(st.booleans()):
        return "metric", {"metrics": draw(st.lists(metric_row(), min_size=1, max_size=4))}
    return "prediction", {"predictions": draw(st.lists(prediction_row(), min_size=1, max_size=3))}


# ---------------------------------------------------------------------------------------------
# reference model


def _drkey(ref: dict[str, str]) -> str:
    return f"id:{ref['id']}" if "id" in ref else f"gk:{ref.get('globalKey', ref.get('global_key'))}"


def _norm(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return {repr(float(k)): (tuple(v) if isinstance(v, list) else float(v)) for k, v in value.items()}
    return {"": tuple(value) if isinstance(value, list) else float(value)}


def _pred_leaves(row: dict[str, Any]) -> list[tuple[str, str | None, float]]:
    """(feature, subclass, name, value) of a raw prediction row, as Labelbox places them."""
    out = []
    for cm in row.get("customMetrics", []):
        out.append((row["name"], None, cm["name"], float(cm["value"])))
    answer = row.get("answer")
    answers = [answer] if isinstance(answer, dict) else answer if isinstance(answer, list) else []
    for a in answers:
        for cm in a.get("customMetrics", []):
            out.append((row["name"], a["name"], cm["name"], float(cm["value"])))
    return out  # type: ignore[return-value]


@dataclass
class Reference:
    leaves: Leaves = field(default_factory=dict)
    defs: dict[str, str] = field(default_factory=dict)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (event index, error class)
    touched: bool = False  # some message of the run was applied (the run is known to the API)

    def apply(self, idx: int, kind: str, body: dict[str, Any]) -> None:
        pending: dict[str, str] = {}
        sets: list[tuple[tuple[Any, ...], str, dict[str, Any]]] = []
        try:
            if kind == "metric":
                for m in body["metrics"]:
                    name = m.get("metric_name", m.get("metricName"))
                    agg = m["aggregation"]
                    value = _norm(m.get("value", m.get("metricValue")))
                    self._check(name, agg, value, pending)
                    key = (
                        name,
                        _drkey(m.get("data_row") or m["dataRow"]),
                        m.get("feature_name", m.get("featureName")),
                        m.get("subclass_name", m.get("subclassName")),
                        "m",
                    )
                    sets.append((key, "set", value))
            else:
                for row in body["predictions"]:
                    src = "u:" + row["uuid"]
                    sets.append(((src,), "drop", {}))
                    for f, s, name, v in _pred_leaves(row):
                        self._check(name, "ARITHMETIC_MEAN", {"": v}, pending)
                        sets.append(((name, _drkey(row["dataRow"]), f, s, src), "set", {"": v}))
        except _Reject as r:
            self.rejected.append((idx, r.error_class))
            return
        self.defs.update(pending)
        self.touched = True
        for key, op, value in sets:
            if op == "drop":
                for k in [k for k in self.leaves if k[4] == key[0]]:
                    del self.leaves[k]
            else:
                self.leaves[key] = value  # type: ignore[index]

    def _check(self, name: str, agg: str, value: dict[str, Any], pending: dict[str, str]) -> None:
        fixed = pending.get(name) or self.defs.get(name)
        if fixed is not None and fixed != agg:
            raise _Reject("aggregate.conflict")
        pending[name] = agg
        if agg in ("GEOMETRIC_MEAN", "HARMONIC_MEAN") and any(v < 0 for v in value.values()):
            raise _Reject("aggregate.domain")

    def run_level(self, rows: list[str] | None = None) -> dict[tuple[Any, ...], tuple[Any, int]]:
        return run_values(self.leaves, self.defs, rows)

    def nodes(self) -> dict[tuple[Any, ...], Any]:
        return node_values(self.leaves, self.defs)


class _Reject(Exception):
    def __init__(self, error_class: str) -> None:
        self.error_class = error_class


# ---------------------------------------------------------------------------------------------
# API output → flat dict, comparison


def flatten(metrics: list[dict[str, Any]]) -> dict[tuple[Any, ...], tuple[Any, int]]:
    out: dict[tuple[Any, ...], tuple[Any, int]] = {}

    def val(v: Any) -> Any:
        if isinstance(v, dict):
            cm = (v["tp"], v["fp"], v["tn"], v["fn"])
            tp, fp, _tn, fn = cm
            assert v["precision"] == (tp / (tp + fp) if tp + fp else None)
            assert v["recall"] == (tp / (tp + fn) if tp + fn else None)
            return cm
        return v

    def add(t: dict[str, Any], m: str, f: str | None, s: str | None) -> None:
        if t["count"] > 0:
            out[(m, "", f, s)] = (val(t["value"]), t["count"])
        for c in t["confidence"]:
            out[(m, repr(float(c["confidence"])), f, s)] = (val(c["value"]), c["count"])

    for md in metrics:
        add(md, md["metric"], None, None)
        for fd in md["features"]:
            add(fd, md["metric"], fd["feature"], None)
            for sd in fd["subclasses"]:
                add(sd, md["metric"], fd["feature"], sd["subclass"])
    return out


def diff(got: dict[tuple[Any, ...], tuple[Any, int]], want: dict[tuple[Any, ...], tuple[Any, int]]) -> list[str]:
    problems = []
    for k in sorted(set(got) | set(want), key=repr):
        g, w = got.get(k), want.get(k)
        if g is None or w is None or g[1] != w[1] or not close(g[0], w[0]):
            problems.append(f"{k}: got {g}, want {w}")
    return problems


# ---------------------------------------------------------------------------------------------
# Kafka + process helpers


async def read_topic(bootstrap: str, topic: str) -> list[Any]:
    ends = await end_offsets(bootstrap, [topic])
    if not any(ends.values()):
        return []
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    out: list[Any] = []
    try:
        tps = [TopicPartition(t, p) for (t, p) in ends]
        c.assign(tps)
        for tp in tps:
            c.seek(tp, 0)
        pos = {(tp.topic, tp.partition): 0 for tp in tps}
        while any(pos[k] < ends[k] for k in ends):
            batch = await c.getmany(timeout_ms=500)
            for tp, recs in batch.items():
                for r in recs:
                    out.append(r)
                    pos[(tp.topic, tp.partition)] = r.offset + 1
    finally:
        await c.stop()
    return out


def open_store(store: str) -> SqlStateBackend:
    if store.startswith("postgres"):
        return SqlStateBackend.postgres(store)
    return SqlStateBackend.sqlite(store)


async def wait_caught_up(bootstrap: str, topics: list[str], group: str, store: str, limit_s: float = 90) -> None:
    """Until the store's offsets reach the topics' end offsets (all committed, exactly-once)."""
    ends = {k: v for k, v in (await end_offsets(bootstrap, topics)).items() if v > 0}
    backend = open_store(store)
    deadline = time.monotonic() + limit_s
    try:
        while True:
            stored = await asyncio.to_thread(backend.load_offsets, group, list(ends))
            if all(stored.get(k, 0) >= v for k, v in ends.items()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"aggregator did not catch up: stored {stored}, ends {ends}")
            await asyncio.sleep(0.1)
    finally:
        backend.close()


@dataclass
class AggProcess:
    """``python -m runstream run --role aggregator`` as a real child process."""

    env: dict[str, str]
    cwd: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['RUNSTREAM_HTTP_PORT']}"

    def start(self) -> None:
        env = {**os.environ, **self.env}
        with self.log.open("ab") as logf:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "runstream", "run", "--role", "aggregator"],
                cwd=self.cwd,
                env={**env, "PYTHONPATH": str(ROOT)},
                stdout=logf,
                stderr=subprocess.STDOUT,
            )

    async def wait_http(self, limit_s: float = 60) -> None:
        deadline = time.monotonic() + limit_s
        async with aiohttp.ClientSession() as s:
            while True:
                assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
                try:
                    async with s.get(self.url + "/openapi.json") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError("aggregator HTTP did not come up:\n" + self.log.read_text()[-3000:])
                await asyncio.sleep(0.2)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return -9


def agg_env(bootstrap: str, topics: dict[str, str], group: str, store: str) -> dict[str, str]:
    env = {
        "RUNSTREAM_KAFKA_BOOTSTRAP": bootstrap,
        "RUNSTREAM_TOPIC_PREDICTIONS": topics["predictions"],
        "RUNSTREAM_TOPIC_METRICS": topics["metrics"],
        "RUNSTREAM_TOPIC_DLQ": topics["dlq"],
        "RUNSTREAM_AGGREGATOR_GROUP": group,
        "RUNSTREAM_STATE_COMMIT_INTERVAL_MS": "200",
        "RUNSTREAM_HTTP_PORT": str(free_port()),
        "RUNSTREAM_HTTP_HOST": "127.0.0.1",
    }
    if store.startswith("postgres"):
        env |= {"RUNSTREAM_STATE_BACKEND": "postgres", "RUNSTREAM_STATE_POSTGRES_DSN": store}
    else:
        env |= {"RUNSTREAM_STATE_BACKEND": "sqlite", "RUNSTREAM_STATE_SQLITE_PATH": store}
    return env


def encode_events(
    run: str, topics: dict[str, str], events: list[tuple[str, dict[str, Any]]]
) -> list[tuple[str, bytes, bytes]]:
    return [
        (
            topics["metrics"] if kind == "metric" else topics["predictions"],
            run.encode(),
            orjson.dumps({"model_run_id": run, **body}),
        )
        for kind, body in events
    ]


async def check_api(
    url: str, run: str, ref: Reference, slices: list[list[str]], headers: dict[str, str] | None = None
) -> list[str]:
    """Every value the API returns for run / features / subclasses / slices / data rows vs. the reference."""
    problems: list[str] = []
    async with aiohttp.ClientSession(headers=headers) as s:
        async with s.get(f"{url}/v1/model-runs/{run}/metrics") as r:
            if not ref.touched:
                return [] if r.status == 404 else [f"unexpected status {r.status}"]
            assert r.status == 200, await r.text()
            body = await r.json()
        problems += ["run: " + p for p in diff(flatten(body["metrics"]), ref.run_level())]
        for rows in slices:
            async with s.post(f"{url}/v1/model-runs/{run}/metrics/query", json={"data_row_ids": rows}) as r:
                assert r.status == 200, await r.text()
                body = await r.json()
            problems += [f"slice {rows}: " + p for p in diff(flatten(body["metrics"]), ref.run_level(rows))]
        nodes = ref.nodes()
        for dr in sorted({k[2] for k in nodes}):
            async with s.get(f"{url}/v1/model-runs/{run}/data-rows/{dr}/metrics") as r:
                assert r.status == 200, await r.text()
                body = await r.json()
            problems += [f"row {dr}: " + p for p in diff(flatten(body["metrics"]), ref.run_level([dr]))]
        for flt, rows in filter_cases(nodes):
            async with s.post(f"{url}/v1/model-runs/{run}/metrics/query", json={"filter": flt}) as r:
                assert r.status == 200, await r.text()
                body = await r.json()
            if body["data_row_count"] != len(rows):
                problems.append(f"filter {flt}: {body['data_row_count']} data rows, want {sorted(rows)}")
            problems += [f"filter {flt}: " + p for p in diff(flatten(body["metrics"]), ref.run_level(rows))]
    return problems


def filter_number(v: Any) -> float | None:
    """What a filter compares: the value, or F1 for a confusion matrix (None if undefined)."""
    if isinstance(v, tuple):
        tp, fp, _tn, fn = v
        return 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None
    return None if v is None else float(v)


def filter_cases(nodes: dict[tuple[Any, ...], Any], limit: int = 16) -> list[tuple[dict[str, Any], list[str]]]:
    """Filters on every kind of node (data row, feature, subclass, confidence key) with the data
    rows the reference selects: unbounded, a narrow window around one node's value, at least it."""
    groups: dict[tuple[Any, ...], dict[str, float]] = {}
    for (m, ck, dr, f, sc), v in nodes.items():
        num = filter_number(v)
        groups.setdefault((m, ck, f, sc), {})
        if num is not None:
            groups[(m, ck, f, sc)][dr] = num
    out: list[tuple[dict[str, Any], list[str]]] = []
    # nodes below the data row first: those are what the node-value index serves
    for m, ck, f, sc in sorted(groups, key=lambda g: (g[2] is None, repr(g)))[:limit]:
        vals = groups[(m, ck, f, sc)]
        base: dict[str, Any] = {"metric": m}
        if ck:
            base["confidence"] = float(ck)
        if f is not None:
            base["feature"] = f
        if sc is not None:
            base["subclass"] = sc
        out.append((base, sorted(vals)))
        finite = sorted(v for v in vals.values() if abs(v) < float("inf"))
        if finite:
            v = finite[len(finite) // 2]
            eps = 1e-9 * max(1.0, abs(v))  # the engine's and the reference's roundings may differ
            lo, hi = v - eps, v + eps
            out.append(({**base, "min": lo, "max": hi}, sorted(d for d, x in vals.items() if lo <= x <= hi)))
            out.append(({**base, "min": lo}, sorted(d for d, x in vals.items() if x >= lo)))
    return out


def sys_executable_ok() -> bool:
    return Path(PYTHON).exists() or bool(sys.executable)
