"""Demo stream (pure): deterministic, covers every shape the service handles, bad events are really bad."""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest

from devstack.demo_data import BAD_KINDS, DemoMessage, demo_catalog, demo_stream
from service.errors import EventValidationError
from service.events import (
    ConfusionMatrixMetricRow,
    LabelEvent,
    MetricEvent,
    PredictionEvent,
    ScalarMetricRow,
    parse_event,
)


def take(n: int, seed: int = 0, bad: float = 0.05, runs: int = 3) -> list[DemoMessage]:
    return list(itertools.islice(demo_stream(demo_catalog(seed, model_runs=runs), seed, bad_fraction=bad), n))


def test_same_seed_same_catalog_and_stream() -> None:
    assert demo_catalog(3) == demo_catalog(3)
    assert demo_catalog(3) != demo_catalog(4)
    assert [m.value for m in take(300, seed=3)] == [m.value for m in take(300, seed=3)]
    assert [m.value for m in take(300, seed=3)] != [m.value for m in take(300, seed=4)]


def test_catalog_ids_are_unique_and_consistent() -> None:
    c = demo_catalog(1, model_runs=3, data_rows_per_run=10)
    ids = [d.id for d in c.data_rows] + [p.id for p in c.projects] + [lb.id for lb in c.labels]
    ids += [m.id for m in c.model_runs]
    assert len(ids) == len(set(ids)) == 30 + 3 + 30 + 3
    assert len({d.global_key for d in c.data_rows}) == 30
    row_ids = {d.id for d in c.data_rows}
    assert all(lb.data_row_id in row_ids for lb in c.labels)
    assert {m.project_id for m in c.model_runs} == {p.id for p in c.projects}
    assert c.to_json()["model_runs"][0]["data_row_ids"] == [d.id for d in c.model_runs[0].data_rows]
    with pytest.raises(ValueError):
        demo_catalog(0, model_runs=0)


def test_good_events_parse_and_bad_events_fail_with_the_expected_class() -> None:
    msgs = take(4000, bad=0.1)
    bad_kinds = set()
    for m in msgs:
        if m.expect is None:
            ev = parse_event(m.kind, m.value, max_bytes=1 << 20)
            assert ev.model_run_id == m.model_run_id
        else:
            with pytest.raises(EventValidationError) as err:
                parse_event(m.kind, m.value, max_bytes=1 << 20)
            assert err.value.error_class == m.expect, m.bad_kind
            bad_kinds.add(m.bad_kind)
    assert bad_kinds == set(BAD_KINDS)
    assert 0.07 < sum(m.expect is not None for m in msgs) / len(msgs) < 0.13


def test_stream_covers_every_shape_and_keeps_one_aggregation_per_metric_name() -> None:
    catalog = demo_catalog(0, model_runs=2)
    known = {d.id for d in catalog.data_rows} | {d.global_key for d in catalog.data_rows}
    msgs = list(itertools.islice(demo_stream(catalog, 0, bad_fraction=0.0), 3000))
    assert all(m.expect is None for m in msgs)
    # labels first: data rows, labels and project of every run
    first = [parse_event("label", m.value, max_bytes=1 << 20) for m in msgs[:6]]
    assert all(isinstance(e, LabelEvent) for e in first)

    aggregations: dict[tuple[str, str], set[str]] = defaultdict(set)
    granularities: set[str] = set()
    seen = defaultdict(int)
    for m in msgs:
        ev = parse_event(m.kind, m.value, max_bytes=1 << 20)
        if isinstance(ev, PredictionEvent):
            for row in ev.predictions:
                assert (row.data_row.id or row.data_row.global_key) in known
                leaves = row.custom_metric_leaves()
                assert leaves
                if "bbox" in row.ndjson:
                    seen["bbox"] += 1
                elif isinstance(row.ndjson.get("answer"), list):
                    seen["checklist"] += 1
                    assert all(leaf.subclass for leaf in leaves)
                else:
                    seen["radio"] += 1
                    assert all(leaf.subclass for leaf in leaves)
        elif isinstance(ev, MetricEvent):
            for metric in ev.metrics:
                assert (metric.data_row.id or metric.data_row.global_key) in known
                aggregations[(ev.model_run_id, metric.metric_name or "")].add(metric.aggregation)
                if isinstance(metric, ConfusionMatrixMetricRow):
                    seen["confusion_dict" if isinstance(metric.value, dict) else "confusion"] += 1
                elif isinstance(metric, ScalarMetricRow) and isinstance(metric.value, dict):
                    seen["scalar_dict"] += 1
                granularities.add(
                    "subclass" if metric.subclass_name else "feature" if metric.feature_name else "data_row"
                )
    assert all(len(a) == 1 for a in aggregations.values())
    used = set().union(*aggregations.values())
    assert used == {"ARITHMETIC_MEAN", "GEOMETRIC_MEAN", "HARMONIC_MEAN", "SUM", "CONFUSION_MATRIX"}
    assert granularities == {"data_row", "feature", "subclass"}
    for shape in ("bbox", "radio", "checklist", "confusion", "confusion_dict", "scalar_dict"):
        assert seen[shape] > 0, shape


def test_bad_fraction_is_checked() -> None:
    with pytest.raises(ValueError):
        next(demo_stream(demo_catalog(0), 0, bad_fraction=1.5))
