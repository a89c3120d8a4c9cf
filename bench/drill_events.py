"""The drill's deterministic event stream and its independent from-scratch reference.

Pure (no I/O). ``DrillStream(seed, ...)`` yields ``Produced`` messages: small valid events
(1-row bbox predictions with a customMetric, 1-2-row scalar / confusion-matrix metric events,
data-row label events) and ~1 % poison of every kind, each tagged with who must dead-letter it
(``uploader`` or ``aggregator``) and with which error class. Every poison message's bytes are
unique, so a DLQ entry (which carries the original bytes) is matched back by content.

``Reference`` interprets the raw JSON of the messages read back from the topics in offset
order — with ``json``/``orjson`` only, never ``service.events`` or ``service.aggregation`` — and
recomputes what the aggregator must report (DESIGN §4) and what the Labelbox API must hold.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

# metric name -> aggregation (fixed per run by a warm-up event that is always first)
METRICS: dict[str, str] = {
    "acc": "ARITHMETIC_MEAN",
    "calib": "GEOMETRIC_MEAN",
    "speed": "HARMONIC_MEAN",
    "alarms": "SUM",
    "cm50": "CONFUSION_MATRIX",
}
CUSTOM_METRIC = "cm_iou"  # customMetric name (never a metric-event name: no cross-topic order)
FEATURES = ("cat", "dog", "car")
MAX_MESSAGE_BYTES = 65_536  # RUNSTREAM_MAX_MESSAGE_BYTES of the drill's processes

# poison kind -> (topic kind, role that dead-letters it, error class)
POISON: dict[str, tuple[str, str, str]] = {
    "malformed_json": ("prediction", "uploader", "json"),
    "non_object_json": ("metric", "uploader", "json"),
    "wrong_types": ("metric", "uploader", "schema"),
    "missing_data_row": ("prediction", "uploader", "schema"),
    "both_id_and_global_key": ("prediction", "uploader", "schema"),
    "reserved_metric_name": ("metric", "uploader", "schema"),
    "bad_confusion_matrix": ("metric", "uploader", "schema"),
    "nan_value": ("metric", "uploader", "schema"),
    "custom_metrics_on_mask": ("prediction", "uploader", "schema"),
    "oversized": ("prediction", "uploader", "too_large"),
    "label_two_selectors": ("label", "uploader", "schema"),
    "aggregate_conflict": ("metric", "aggregator", "aggregate.conflict"),
    "aggregate_domain": ("metric", "aggregator", "aggregate.domain"),
    "unknown_data_row": ("prediction", "uploader", "labelbox.row_failed"),
}


def digest(value: bytes | None) -> bytes:
    return hashlib.blake2b(value or b"", digest_size=12).digest()


def _poison_uuid(tag: int, n: int) -> str:
    """A valid UUID for a poison row (so the row fails for its own reason, not for its uuid): tag and event number."""
    return f"{tag:08x}-0000-4000-8000-{n % 16**12:012x}"


@dataclass(frozen=True, slots=True)
class Catalog:
    seed: int
    runs: tuple[str, ...]
    rows: dict[str, tuple[tuple[str, str], ...]]  # run -> ((data row id, global key), ...)

    def seed_json(self, registered_fraction: float = 0.5) -> dict[str, Any]:
        """Admin-API bodies: every data row exists; only part of each run's rows is pre-registered
        (the uploader registers the rest before importing)."""
        data_rows = [{"id": i, "globalKey": g} for run in self.runs for i, g in self.rows[run]]
        runs = [
            {"id": run, "name": f"drill-{run}",
             "dataRowIds": [i for i, _ in self.rows[run][: int(len(self.rows[run]) * registered_fraction)]]}
            for run in self.runs
        ]  # fmt: skip
        return {"dataRows": data_rows, "modelRuns": runs}


def make_catalog(seed: int, runs: int, rows_per_run: int) -> Catalog:
    run_ids = tuple(f"mr{seed}-{r:02d}" for r in range(runs))
    rows = {
        run: tuple((f"dr{seed}-{r:02d}-{i:04d}", f"gk{seed}-{r:02d}-{i:04d}") for i in range(rows_per_run))
        for r, run in enumerate(run_ids)
    }
    return Catalog(seed, run_ids, rows)


@dataclass(frozen=True, slots=True)
class Produced:
    kind: str  # prediction | metric | label
    run: str
    value: bytes
    poison: str | None = None  # POISON key


@dataclass
class DrillStream:
    """Deterministic stream over a catalog: warm-ups first, then ``total`` events in all."""

    catalog: Catalog
    total: int
    poison_fraction: float = 0.01
    resend_fraction: float = 0.02  # predictions re-sending an earlier uuid of the run (replacement)
    _recent: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)  # run -> (uuid, drkey json, name)

    def __iter__(self) -> Iterator[Produced]:
        cat = self.catalog
        rnd = random.Random(f"drill/{cat.seed}")
        n = 0
        for run in cat.runs:  # fixes every metric's aggregation in every run
            d = cat.rows[run][0][0]
            metrics = [self._metric(rnd, d, name, None) for name in METRICS]
            yield Produced("metric", run, orjson.dumps({"model_run_id": run, "metrics": metrics}))
            n += 1
        poison_kinds = list(POISON)
        k = 0
        while n < self.total:
            run = rnd.choice(cat.runs)
            if rnd.random() < self.poison_fraction:
                kind = poison_kinds[k % len(poison_kinds)]  # round robin: every kind equally often
                k += 1
                yield self._poison(rnd, run, kind, n)
            else:
                p = rnd.random()
                if p < 0.6:
                    yield self._prediction(rnd, run, n)
                elif p < 0.995:
                    rows = cat.rows[run]
                    metrics = []
                    used: set[tuple[str, str | None]] = set()
                    for _ in range(rnd.randint(1, 2)):
                        name = rnd.choice(list(METRICS))
                        feature = rnd.choice(FEATURES) if rnd.random() < 0.5 else None
                        if (name, feature) in used:
                            continue
                        used.add((name, feature))
                        metrics.append(self._metric(rnd, rnd.choice(rows)[0], name, feature))
                    yield Produced("metric", run, orjson.dumps({"model_run_id": run, "metrics": metrics}))
                else:
                    d = rnd.choice(cat.rows[run])[0]
                    yield Produced("label", run, orjson.dumps({"model_run_id": run, "data_row_ids": [d]}))
            n += 1

    @staticmethod
    def _metric(rnd: random.Random, d: str, name: str, feature: str | None) -> dict[str, Any]:
        agg = METRICS[name]
        value: Any
        if agg == "CONFUSION_MATRIX":
            value = [rnd.randint(0, 20), rnd.randint(0, 5), rnd.randint(0, 50), rnd.randint(0, 5)]
        elif agg == "SUM":
            value = round(rnd.uniform(0, 20), 4)
        else:
            value = round(rnd.uniform(0.05, 1.0), 4)
        row: dict[str, Any] = {"dataRow": {"id": d}, "metricName": name, "metricValue": value, "aggregation": agg}
        if feature:
            row["featureName"] = feature
        return row

    def _prediction(self, rnd: random.Random, run: str, n: int) -> Produced:
        recent = self._recent.setdefault(run, [])
        value = round(rnd.uniform(0.0, 1.0), 4)
        if recent and rnd.random() < self.resend_fraction:
            uuid, _drk, name = rnd.choice(recent)
            dr_id, gk = self.catalog.rows[run][int(uuid.split("-")[1], 16) % len(self.catalog.rows[run])]
            ref: dict[str, str] = {"id": dr_id} if _drk == "id" else {"globalKey": gk}
        else:
            idx = rnd.randrange(len(self.catalog.rows[run]))
            dr_id, gk = self.catalog.rows[run][idx]
            # a UUID (Labelbox fails any other uuid) that carries seed, data row index and event number
            uuid = f"{self.catalog.seed % 16**8:08x}-{idx % 16**4:04x}-4000-8000-{n % 16**12:012x}"
            name = rnd.choice(FEATURES)
            use_id = rnd.random() < 0.5
            ref = {"id": dr_id} if use_id else {"globalKey": gk}
            recent.append((uuid, "id" if use_id else "gk", name))
            if len(recent) > 200:
                recent.pop(0)
        row = {
            "uuid": uuid,
            "dataRow": ref,
            "name": name,
            "bbox": {"top": rnd.randint(0, 400), "left": rnd.randint(0, 600), "height": 20, "width": 30},
            "customMetrics": [{"name": CUSTOM_METRIC, "value": value}],
        }
        return Produced("prediction", run, orjson.dumps({"model_run_id": run, "predictions": [row]}))

    def _poison(self, rnd: random.Random, run: str, kind: str, n: int) -> Produced:
        topic_kind = POISON[kind][0]
        d, gk = rnd.choice(self.catalog.rows[run])
        mr = orjson.dumps(run).decode()
        bbox = {"top": n % 400, "left": 1, "height": 2, "width": 3}
        raw: bytes
        if kind == "malformed_json":
            raw = f'{{"model_run_id": {mr}, "predictions": [{{"dataRow": {{"id": "{d}"}}, "n": {n}'.encode()
        elif kind == "non_object_json":
            raw = orjson.dumps([run, n])
        elif kind == "wrong_types":
            raw = orjson.dumps(
                {
                    "model_run_id": run,
                    "metrics": [
                        {
                            "dataRow": {"id": d},
                            "metricName": "acc",
                            "metricValue": f"high-{n}",
                            "aggregation": "ARITHMETIC_MEAN",
                        }
                    ],
                }
            )
        elif kind == "missing_data_row":
            raw = orjson.dumps(
                {"model_run_id": run, "predictions": [{"uuid": _poison_uuid(0xBAD, n), "name": "cat", "bbox": bbox}]}
            )
        elif kind == "both_id_and_global_key":
            raw = orjson.dumps(
                {
                    "model_run_id": run,
                    "predictions": [
                        {"uuid": _poison_uuid(0xBAD, n), "dataRow": {"id": d, "globalKey": gk}, "name": "cat",
                         "bbox": bbox}
                    ],
                }
            )
        elif kind == "reserved_metric_name":
            raw = orjson.dumps(
                {
                    "model_run_id": run,
                    "metrics": [
                        {
                            "dataRow": {"id": d},
                            "metricName": "IoU",
                            "metricValue": n / 1e9,
                            "aggregation": "ARITHMETIC_MEAN",
                        }
                    ],
                }
            )
        elif kind == "bad_confusion_matrix":
            raw = orjson.dumps(
                {
                    "model_run_id": run,
                    "metrics": [
                        {
                            "dataRow": {"id": d},
                            "metricName": "cm50",
                            "metricValue": [1, 2, n],
                            "aggregation": "CONFUSION_MATRIX",
                        }
                    ],
                }
            )
        elif kind == "nan_value":
            raw = (
                f'{{"model_run_id": {mr}, "metrics": [{{"dataRow": {{"id": "{d}"}}, "metricName": "acc", '
                f'"metricValue": NaN, "aggregation": "ARITHMETIC_MEAN", "featureName": "f{n}"}}]}}'
            ).encode()
        elif kind == "custom_metrics_on_mask":
            raw = orjson.dumps(
                {
                    "model_run_id": run,
                    "predictions": [
                        {
                            "uuid": _poison_uuid(0xBAD, n),
                            "dataRow": {"id": d},
                            "name": "road",
                            "mask": {"url": "https://example.com/m.png", "colorRGB": [255, 0, 0]},
                            "customMetrics": [{"name": CUSTOM_METRIC, "value": 0.5}],
                        }
                    ],
                }
            )
        elif kind == "oversized":
            raw = orjson.dumps(
                {
                    "model_run_id": run,
                    "predictions": [
                        {
                            "uuid": _poison_uuid(0xB16, n),
                            "dataRow": {"id": d},
                            "name": "cat",
                            "bbox": bbox,
                            "customMetrics": [{"name": CUSTOM_METRIC, "value": 0.5}],
                            "pad": "x" * (MAX_MESSAGE_BYTES + 4096),
                        }
                    ],
                }
            )
        elif kind == "label_two_selectors":
            raw = orjson.dumps({"model_run_id": run, "label_ids": [f"l-{n}"], "project_id": "p"})
        elif kind == "aggregate_conflict":  # valid for Labelbox, conflicts with the run's SUM for the aggregator
            raw = orjson.dumps(
                {
                    "model_run_id": run,
                    "metrics": [
                        {
                            "dataRow": {"id": d},
                            "metricName": "alarms",
                            "metricValue": 1000 + n,
                            "aggregation": "ARITHMETIC_MEAN",
                        }
                    ],
                }
            )
        elif kind == "aggregate_domain":  # valid for Labelbox, a negative value for a geometric mean
            raw = orjson.dumps(
                {
                    "model_run_id": run,
                    "metrics": [
                        {
                            "dataRow": {"id": d},
                            "metricName": "calib",
                            "metricValue": -1 - n / 1e9,
                            "aggregation": "GEOMETRIC_MEAN",
                            "featureName": "cat",
                        }
                    ],
                }
            )
        elif kind == "unknown_data_row":  # valid for the aggregator, FAILURE row at Labelbox
            raw = orjson.dumps(
                {
                    "model_run_id": run,
                    "predictions": [
                        {
                            "uuid": _poison_uuid(0x6057, n),
                            "dataRow": {"id": f"missing-{n}"},
                            "name": "cat",
                            "bbox": bbox,
                            "customMetrics": [{"name": CUSTOM_METRIC, "value": round(rnd.uniform(0, 1), 4)}],
                        }
                    ],
                }
            )
        else:  # pragma: no cover
            raise ValueError(kind)
        return Produced(topic_kind, run, raw, kind)


# ------------------------------------------------------------------------------------------
# the reference: read-back log (offset order per partition) -> expectations


def _agg(values: list[Any], aggregation: str) -> Any:
    if aggregation == "CONFUSION_MATRIX":
        return tuple(sum(v[i] for v in values) for i in range(4))
    if aggregation == "SUM":
        return math.fsum(values)
    if aggregation == "ARITHMETIC_MEAN":
        return math.fsum(values) / len(values)
    if any(v == 0 for v in values):
        return 0.0
    if aggregation == "GEOMETRIC_MEAN":
        return math.exp(math.fsum(math.log(v) for v in values) / len(values))
    return len(values) / math.fsum(1.0 / v for v in values)


def _drkey(ref: dict[str, Any]) -> str:
    return f"id:{ref['id']}" if "id" in ref else f"gk:{ref['globalKey']}"


class _Reject(Exception):
    pass


@dataclass
class RunReference:
    """One model run: current leaves after replacements, fixed aggregations, rejected messages."""

    defs: dict[str, str] = field(default_factory=dict)
    # (metric, data row key, feature | None, source) -> value; source "m" for metric rows, else the uuid
    leaves: dict[tuple[str, str, str | None, str], Any] = field(default_factory=dict)
    by_uuid: dict[str, list[tuple[str, str, str | None, str]]] = field(default_factory=dict)
    applied: int = 0

    def apply(self, kind: str, body: dict[str, Any]) -> str | None:
        """Apply one message atomically; the error class if the aggregator must reject it."""
        pending: dict[str, str] = {}
        sets: list[tuple[tuple[str, str, str | None, str], Any]] = []
        drops: list[str] = []
        try:
            if kind == "metric":
                for m in body["metrics"]:
                    name, agg, value = m["metricName"], m["aggregation"], m["metricValue"]
                    self._check(name, agg, value, pending)
                    sets.append(
                        (
                            (name, _drkey(m["dataRow"]), m.get("featureName"), "m"),
                            tuple(value) if isinstance(value, list) else float(value),
                        )
                    )
            else:
                for row in body["predictions"]:
                    drops.append(row["uuid"])
                    for cm in row.get("customMetrics", []):
                        self._check(cm["name"], "ARITHMETIC_MEAN", cm["value"], pending)
                        sets.append(
                            ((cm["name"], _drkey(row["dataRow"]), row["name"], row["uuid"]), float(cm["value"]))
                        )
        except _Reject as r:
            return str(r)
        self.defs.update(pending)
        self.applied += 1
        for uuid in drops:
            for k in self.by_uuid.pop(uuid, []):
                self.leaves.pop(k, None)
        for k, v in sets:
            self.leaves[k] = v
            if k[3] != "m":
                self.by_uuid.setdefault(k[3], []).append(k)
        return None

    def _check(self, name: str, agg: str, value: Any, pending: dict[str, str]) -> None:
        fixed = pending.get(name) or self.defs.get(name)
        if fixed is not None and fixed != agg:
            raise _Reject("aggregate.conflict")
        pending[name] = agg
        if agg in ("GEOMETRIC_MEAN", "HARMONIC_MEAN") and not isinstance(value, list) and value < 0:
            raise _Reject("aggregate.domain")

    def expected(self, rows: set[str] | None = None) -> dict[tuple[str, str | None], tuple[Any, int]]:
        """(metric, feature | None) -> (value across data rows, number of data rows), as the API reports
        run level (feature None) and per feature; restricted to ``rows`` (data row keys) if given."""
        feature_direct: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
        row_direct: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for (metric, dr, f, _src), v in self.leaves.items():
            if rows is not None and dr not in rows:
                continue
            if f is None:
                row_direct[(metric, dr)].append(v)
            else:
                feature_direct[(metric, dr, f)].append(v)
        feature_nodes = {k: _agg(vs, self.defs[k[0]]) for k, vs in feature_direct.items()}
        children: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for (metric, dr, _f), v in feature_nodes.items():
            children[(metric, dr)].append(v)
        row_nodes: dict[tuple[str, str], Any] = {}
        for k in set(row_direct) | set(children):
            row_nodes[k] = (
                _agg(row_direct[k], self.defs[k[0]]) if row_direct.get(k) else _agg(children[k], self.defs[k[0]])
            )
        by_metric: dict[str, list[Any]] = defaultdict(list)
        for (metric, _dr), v in row_nodes.items():
            by_metric[metric].append(v)
        by_feature: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for (metric, _dr, f), v in feature_nodes.items():
            by_feature[(metric, f)].append(v)
        out: dict[tuple[str, str | None], tuple[Any, int]] = {}
        for metric, vs in by_metric.items():
            out[(metric, None)] = (_agg(vs, self.defs[metric]), len(vs))
        for (metric, f), vs in by_feature.items():
            out[(metric, f)] = (_agg(vs, self.defs[metric]), len(vs))
        return out


def close(a: Any, b: Any, rel: float = 1e-7) -> bool:
    if isinstance(a, list | tuple) or isinstance(b, list | tuple):
        return a is not None and b is not None and list(a) == list(b)
    if a is None or b is None:
        return a is b
    return bool(abs(a - b) <= rel * max(abs(a), abs(b)) or abs(a - b) < 1e-12)


def flatten_api(doc: dict[str, Any]) -> dict[tuple[str, str | None], tuple[Any, int]]:
    """The query API's metrics document -> (metric, feature | None) -> (value, count)."""
    out: dict[tuple[str, str | None], tuple[Any, int]] = {}

    def val(v: Any) -> Any:
        return (v["tp"], v["fp"], v["tn"], v["fn"]) if isinstance(v, dict) else v

    for md in doc.get("metrics", []):
        if md["count"] > 0:
            out[(md["metric"], None)] = (val(md["value"]), md["count"])
        for fd in md["features"]:
            if fd["count"] > 0:
                out[(md["metric"], fd["feature"])] = (val(fd["value"]), fd["count"])
    return out


def diff(got: dict[Any, tuple[Any, int]], want: dict[Any, tuple[Any, int]]) -> list[str]:
    problems = []
    for k in sorted(set(got) | set(want), key=repr):
        g, w = got.get(k), want.get(k)
        if g is None or w is None or g[1] != w[1] or not close(g[0], w[0]):
            problems.append(f"{k}: got {g}, want {w}")
    return problems
