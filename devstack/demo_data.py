"""Synthetic inference stream for ``runstream demo`` and the seed data the local Labelbox API needs.

Pure and deterministic given a seed: ``demo_catalog(seed)`` names the model runs, projects, labels and
data rows (ids + global keys) that ``make run`` seeds into the local Labelbox-compatible API, and
``demo_stream(catalog, seed)`` yields Kafka messages over exactly those ids — so every good event can
land, and the dashboard shows the same numbers on every run.

The stream exercises what the service must handle: predictions with customMetrics (bbox objects at the
top level, radio and checklist answers inside each answer), scalar metrics at the three granularities
(data row, feature, feature + subclass) with all four aggregations (one aggregation per metric name per
model run, so nothing conflicts), confusion matrices, confidence-keyed values, label events, and a few
bad messages (``bad_fraction``) that the service must send to the DLQ — each tagged with the error class
it should get.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from service.events import EventKind

__all__ = [
    "BAD_KINDS",
    "DemoCatalog",
    "DemoDataRow",
    "DemoLabel",
    "DemoMessage",
    "DemoModelRun",
    "DemoProject",
    "demo_catalog",
    "demo_stream",
]

# metric name -> aggregation, fixed for every model run (DESIGN §4: one aggregation per name per run)
SCALAR_METRICS: dict[str, str] = {
    "accuracy": "ARITHMETIC_MEAN",
    "calibration_gm": "GEOMETRIC_MEAN",
    "speed_hm": "HARMONIC_MEAN",
    "false_alarms_total": "SUM",
}
CONFIDENCE_METRIC = "accuracy_at_confidence"  # ARITHMETIC_MEAN, confidence-keyed
CONFUSION_METRICS = ("50pct_iou", "75pct_iou")
OBJECT_CLASSES = ("cat", "dog", "car")
RADIO = ("weather", ("sunny", "cloudy", "rainy"))
CHECKLIST = ("attributes", ("occluded", "truncated", "blurry"))
CONFIDENCES = ("0.25", "0.5", "0.75")


@dataclass(frozen=True, slots=True)
class DemoDataRow:
    id: str
    global_key: str


@dataclass(frozen=True, slots=True)
class DemoLabel:
    id: str
    project_id: str
    data_row_id: str


@dataclass(frozen=True, slots=True)
class DemoProject:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class DemoModelRun:
    id: str
    name: str
    project_id: str
    data_rows: tuple[DemoDataRow, ...]


@dataclass(frozen=True, slots=True)
class DemoCatalog:
    """Everything the local Labelbox API must know before the demo stream starts."""

    seed: int
    data_rows: tuple[DemoDataRow, ...]
    projects: tuple[DemoProject, ...]
    labels: tuple[DemoLabel, ...]
    model_runs: tuple[DemoModelRun, ...]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for an admin seeding endpoint or a file."""
        return {
            "seed": self.seed,
            "data_rows": [{"id": d.id, "global_key": d.global_key} for d in self.data_rows],
            "projects": [{"id": p.id, "name": p.name} for p in self.projects],
            "labels": [{"id": lb.id, "project_id": lb.project_id, "data_row_id": lb.data_row_id} for lb in self.labels],
            "model_runs": [
                {
                    "id": m.id,
                    "name": m.name,
                    "project_id": m.project_id,
                    "data_row_ids": [d.id for d in m.data_rows],
                }
                for m in self.model_runs
            ],
        }


@dataclass(frozen=True, slots=True)
class DemoMessage:
    """One Kafka message; ``expect`` is None for a good event, else the DLQ error class it should get."""

    kind: EventKind
    model_run_id: str
    value: bytes
    expect: str | None = None
    bad_kind: str | None = None

    @property
    def key(self) -> bytes:
        return self.model_run_id.encode()


def _cuid(seed: int, tag: str, i: int) -> str:
    """A Labelbox-looking id (25 chars starting with 'c'), stable for (seed, tag, i)."""
    return "c" + hashlib.sha1(f"{seed}/{tag}/{i}".encode(), usedforsecurity=False).hexdigest()[:24]


def demo_catalog(seed: int = 0, *, model_runs: int = 2, data_rows_per_run: int = 20) -> DemoCatalog:
    """Model runs (one project each) over their own data rows, each data row with one label."""
    if model_runs < 1 or data_rows_per_run < 1:
        raise ValueError("model_runs and data_rows_per_run must be at least 1")
    data_rows: list[DemoDataRow] = []
    projects: list[DemoProject] = []
    labels: list[DemoLabel] = []
    runs: list[DemoModelRun] = []
    for r in range(model_runs):
        project = DemoProject(_cuid(seed, "project", r), f"demo-project-{seed}-{r}")
        projects.append(project)
        rows = tuple(
            DemoDataRow(_cuid(seed, f"datarow-{r}", i), f"demo-{seed}-run{r}-img{i:04d}")
            for i in range(data_rows_per_run)
        )
        data_rows.extend(rows)
        labels.extend(DemoLabel(_cuid(seed, f"label-{r}", i), project.id, d.id) for i, d in enumerate(rows))
        runs.append(DemoModelRun(_cuid(seed, "modelrun", r), f"demo-model-run-{seed}-{r}", project.id, rows))
    return DemoCatalog(seed, tuple(data_rows), tuple(projects), tuple(labels), tuple(runs))


# --------------------------------------------------------------------------------------------------
# Good events


def _ref(rnd: random.Random, d: DemoDataRow, *, camel: bool) -> dict[str, str]:
    if rnd.random() < 0.5:
        return {"id": d.id}
    return {"globalKey": d.global_key} if camel else {"global_key": d.global_key}


def _r(rnd: random.Random, lo: float = 0.0, hi: float = 1.0) -> float:
    return round(rnd.uniform(lo, hi), 4)


def _bbox_row(rnd: random.Random, d: DemoDataRow) -> dict[str, Any]:
    return {
        "dataRow": _ref(rnd, d, camel=True),
        "name": rnd.choice(OBJECT_CLASSES),
        "bbox": {"top": rnd.randint(0, 400), "left": rnd.randint(0, 600), "height": rnd.randint(8, 200),
                 "width": rnd.randint(8, 200)},
        "confidence": _r(rnd, 0.3, 1.0),
        "customMetrics": [{"name": "iou", "value": _r(rnd, 0.2, 1.0)}, {"name": "area_error", "value": _r(rnd)}],
    }


def _radio_row(rnd: random.Random, d: DemoDataRow) -> dict[str, Any]:
    question, answers = RADIO
    return {
        "dataRow": _ref(rnd, d, camel=True),
        "name": question,
        "answer": {"name": rnd.choice(answers), "confidence": _r(rnd, 0.3, 1.0),
                   "customMetrics": [{"name": "agreement", "value": _r(rnd)}]},
    }


def _checklist_row(rnd: random.Random, d: DemoDataRow) -> dict[str, Any]:
    question, answers = CHECKLIST
    chosen = rnd.sample(answers, rnd.randint(1, len(answers)))
    return {
        "dataRow": _ref(rnd, d, camel=True),
        "name": question,
        "answer": [
            {"name": a, "confidence": _r(rnd, 0.3, 1.0), "customMetrics": [{"name": "agreement", "value": _r(rnd)}]}
            for a in chosen
        ],
    }


def _prediction_event(rnd: random.Random, run: DemoModelRun) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for _ in range(rnd.randint(1, 4)):
        d = rnd.choice(run.data_rows)
        make = rnd.choice((_bbox_row, _bbox_row, _radio_row, _checklist_row))
        rows.append(make(rnd, d))
    return {"model_run_id": run.id, "predictions": rows}


def _scalar_metric(rnd: random.Random, d: DemoDataRow, *, camel: bool) -> dict[str, Any]:
    name = rnd.choice(tuple(SCALAR_METRICS))
    aggregation = SCALAR_METRICS[name]
    value = _r(rnd, 1.0, 20.0) if name == "false_alarms_total" else _r(rnd, 0.05, 1.0)  # GM/HM need > 0
    granularity = rnd.randrange(3)  # data row, feature, feature + subclass
    feature = rnd.choice(OBJECT_CLASSES) if granularity else None
    subclass = rnd.choice(("small", "large")) if granularity == 2 else None
    if camel:
        row: dict[str, Any] = {"dataRow": _ref(rnd, d, camel=True), "metricValue": value, "metricName": name}
        if feature:
            row["featureName"] = feature
        if subclass:
            row["subclassName"] = subclass
    else:
        row = {"data_row": _ref(rnd, d, camel=False), "metric_name": name, "value": value}
        if feature:
            row["feature_name"] = feature
        if subclass:
            row["subclass_name"] = subclass
    row["aggregation"] = aggregation
    return row


def _confusion_metric(rnd: random.Random, d: DemoDataRow) -> dict[str, Any]:
    def counts() -> list[int]:
        return [rnd.randint(0, 20), rnd.randint(0, 5), rnd.randint(0, 50), rnd.randint(0, 5)]

    feature = rnd.choice(OBJECT_CLASSES)
    if rnd.random() < 0.3:  # confidence-keyed confusion matrix
        value: Any = {c: counts() for c in CONFIDENCES}
    else:
        value = counts()
    row: dict[str, Any] = {
        "dataRow": _ref(rnd, d, camel=True),
        "metricValue": value,
        "metricName": rnd.choice(CONFUSION_METRICS),
        "featureName": feature,
        "aggregation": "CONFUSION_MATRIX",
    }
    if rnd.random() < 0.3:
        row["subclassName"] = rnd.choice(("small", "large"))
    return row


def _confidence_scalar(rnd: random.Random, d: DemoDataRow) -> dict[str, Any]:
    return {
        "data_row": _ref(rnd, d, camel=False),
        "metric_name": CONFIDENCE_METRIC,
        "feature_name": rnd.choice(OBJECT_CLASSES),
        "value": {c: _r(rnd, 0.05, 1.0) for c in CONFIDENCES},
        "aggregation": "ARITHMETIC_MEAN",
    }


def _metric_event(rnd: random.Random, run: DemoModelRun) -> dict[str, Any]:
    metrics: list[dict[str, Any]] = []
    camel = rnd.random() < 0.5
    for _ in range(rnd.randint(1, 6)):
        d = rnd.choice(run.data_rows)
        pick = rnd.random()
        if pick < 0.65:
            metrics.append(_scalar_metric(rnd, d, camel=camel))
        elif pick < 0.85:
            metrics.append(_confusion_metric(rnd, d))
        else:
            metrics.append(_confidence_scalar(rnd, d))
    return {"model_run_id": run.id, "metrics": metrics}


def _label_events(catalog: DemoCatalog, run: DemoModelRun) -> list[dict[str, Any]]:
    """What an inference system does first: put its data rows and labels into the model run."""
    label_ids = [lb.id for lb in catalog.labels if lb.project_id == run.project_id]
    return [
        {"model_run_id": run.id, "global_keys": [d.global_key for d in run.data_rows]},
        {"model_run_id": run.id, "label_ids": label_ids},
        {"model_run_id": run.id, "project_id": run.project_id},
    ]


# --------------------------------------------------------------------------------------------------
# Bad events (what the service must dead-letter), each with the error class it should get

BAD_KINDS: tuple[str, ...] = (
    "malformed_json",
    "nan_value",
    "reserved_metric_name",
    "both_id_and_global_key",
    "bad_confusion_matrix",
    "unknown_aggregation",
    "custom_metrics_on_mask",
    "confidence_key_out_of_range",
    "label_event_two_selectors",
)


def _bad_message(rnd: random.Random, run: DemoModelRun) -> DemoMessage:
    kind_name = rnd.choice(BAD_KINDS)
    d = rnd.choice(run.data_rows)
    mr = orjson.dumps(run.id).decode()
    if kind_name == "malformed_json":
        raw = f'{{"model_run_id": {mr}, "predictions": [{{"dataRow": {{"id": "{d.id}"}}, "name": "cat"'.encode()
        return DemoMessage("prediction", run.id, raw, "json", kind_name)
    if kind_name == "nan_value":  # NaN is not JSON; some encoders write it anyway
        raw = (
            f'{{"model_run_id": {mr}, "metrics": [{{"data_row": {{"id": "{d.id}"}}, '
            f'"metric_name": "accuracy", "value": NaN}}]}}'
        ).encode()
        return DemoMessage("metric", run.id, raw, "schema", kind_name)  # names the field: value
    event: dict[str, Any]
    kind: EventKind = "metric"
    if kind_name == "reserved_metric_name":
        event = {"model_run_id": run.id, "metrics": [{"data_row": {"id": d.id}, "metric_name": "IoU", "value": 0.5}]}
    elif kind_name == "both_id_and_global_key":
        kind = "prediction"
        row = _bbox_row(rnd, d)
        row["dataRow"] = {"id": d.id, "globalKey": d.global_key}
        event = {"model_run_id": run.id, "predictions": [row]}
    elif kind_name == "bad_confusion_matrix":
        event = {
            "model_run_id": run.id,
            "metrics": [{"dataRow": {"id": d.id}, "metricName": "50pct_iou", "metricValue": [1, 2, 3]}],
        }
    elif kind_name == "unknown_aggregation":
        event = {
            "model_run_id": run.id,
            "metrics": [{"data_row": {"id": d.id}, "metric_name": "accuracy", "value": 0.5, "aggregation": "MEDIAN"}],
        }
    elif kind_name == "custom_metrics_on_mask":
        kind = "prediction"
        row = {
            "dataRow": {"id": d.id},
            "name": "road",
            "mask": {"url": "https://example.com/mask.png", "colorRGB": [255, 0, 0]},
            "customMetrics": [{"name": "iou", "value": 0.7}],
        }
        event = {"model_run_id": run.id, "predictions": [row]}
    elif kind_name == "confidence_key_out_of_range":
        event = {
            "model_run_id": run.id,
            "metrics": [
                {"data_row": {"id": d.id}, "metric_name": CONFIDENCE_METRIC, "value": {"0.5": 0.1, "1.5": 0.2}}
            ],
        }
    else:  # label_event_two_selectors
        kind = "label"
        event = {"model_run_id": run.id, "label_ids": ["x"], "project_id": run.project_id}
    return DemoMessage(kind, run.id, orjson.dumps(event), "schema", kind_name)


def demo_stream(catalog: DemoCatalog, seed: int = 0, *, bad_fraction: float = 0.02) -> Iterator[DemoMessage]:
    """An endless, deterministic stream: label events for each run first, then a mix of everything."""
    if not 0.0 <= bad_fraction <= 1.0:
        raise ValueError("bad_fraction must be between 0 and 1")
    rnd = random.Random(f"demo-stream/{seed}")
    for run in catalog.model_runs:
        for ev in _label_events(catalog, run):
            yield DemoMessage("label", run.id, orjson.dumps(ev))
    while True:
        run = rnd.choice(catalog.model_runs)
        if rnd.random() < bad_fraction:
            yield _bad_message(rnd, run)
            continue
        pick = rnd.random()
        if pick < 0.55:
            yield DemoMessage("prediction", run.id, orjson.dumps(_prediction_event(rnd, run)))
        elif pick < 0.98:
            yield DemoMessage("metric", run.id, orjson.dumps(_metric_event(rnd, run)))
        else:
            d = rnd.choice(run.data_rows)
            yield DemoMessage("label", run.id, orjson.dumps({"model_run_id": run.id, "data_row_ids": [d.id]}))
