"""Aggregation math and incremental tree updates vs. a from-scratch recomputation."""

from __future__ import annotations

import math
from typing import Any

import pytest
from aggregate_reference import Leaves, close, node_values, run_values
from hypothesis import given, settings
from hypothesis import strategies as st

from service.aggregation import (
    Agg,
    AggregateConflictError,
    AggregateDomainError,
    AnnotationUpdate,
    MemoryState,
    MessageOps,
    MetricLeaf,
    apply_batch,
    apply_message,
    cm_ratios,
    decode_int,
    encode_int,
    normalize_value,
    to_fixed,
    tree_from_leaves,
)

RUN = "run1"
METRICS = {
    "am": "ARITHMETIC_MEAN",
    "gm": "GEOMETRIC_MEAN",
    "hm": "HARMONIC_MEAN",
    "sum": "SUM",
    "cm": "CONFUSION_MATRIX",
}


def test_fixed_point_roundtrip_is_exact() -> None:
    for x in [0.1, -2.5, 1e-300, 5e-324, 1.7e308, 3.0]:
        v = to_fixed(x)
        assert v / (1 << 1074) == x
        assert decode_int(encode_int(v)) == v
    assert decode_int(encode_int(0)) == 0


def test_add_then_remove_leaves_exact_zero_and_no_drift() -> None:
    a = Agg()
    a.add(1e8, 1, "ARITHMETIC_MEAN")
    a.add(1e-8, 1, "ARITHMETIC_MEAN")
    a.add(1e8, -1, "ARITHMETIC_MEAN")
    assert a.result("ARITHMETIC_MEAN") == 1e-8
    a.add(1e-8, -1, "ARITHMETIC_MEAN")
    assert a.n == 0 and a.s == 0 and a.result("ARITHMETIC_MEAN") is None
    assert Agg.decode(a.encode()) == a


def test_zero_rules_for_gm_hm() -> None:
    for aggregation in ("GEOMETRIC_MEAN", "HARMONIC_MEAN"):
        a = Agg()
        a.add(2.0, 1, aggregation)  # type: ignore[arg-type]
        a.add(0.0, 1, aggregation)  # type: ignore[arg-type]
        assert a.result(aggregation) == 0.0  # type: ignore[arg-type]
        a.add(0.0, -1, aggregation)  # type: ignore[arg-type]
        assert a.result(aggregation) == pytest.approx(2.0)  # type: ignore[arg-type]


def test_cm_ratios_null_where_undefined() -> None:
    assert cm_ratios((0, 0, 5, 0)) == {"precision": None, "recall": None, "f1": None}
    r = cm_ratios((2, 2, 0, 0))
    assert r["precision"] == 0.5 and r["recall"] == 1.0 and r["f1"] == pytest.approx(2 / 3)


def _leaf(metric: str, dr: str, f: str | None, s: str | None, value: Any) -> MetricLeaf:
    return MetricLeaf(metric, METRICS[metric], dr, f, s, normalize_value(value))  # type: ignore[arg-type]


def test_explicit_value_wins_over_rollup_and_switches_back() -> None:
    st_ = MemoryState()
    apply_message(st_, MessageOps(RUN, [_leaf("am", "d1", "cat", None, 1.0), _leaf("am", "d1", "dog", None, 3.0)]))
    assert st_.nodes[(RUN, "am", "", "d1", 0, "", "")] == 2.0
    apply_message(st_, MessageOps(RUN, [_leaf("am", "d1", None, None, 10.0)]))
    assert st_.nodes[(RUN, "am", "", "d1", 0, "", "")] == 10.0
    assert st_.run_aggs[(RUN, "am", "", 0, "", "")].result("ARITHMETIC_MEAN") == 10.0
    assert st_.run_aggs[(RUN, "am", "", 1, "cat", "")].result("ARITHMETIC_MEAN") == 1.0


def test_conflict_and_domain_reject_whole_message() -> None:
    st_ = MemoryState()
    apply_message(st_, MessageOps(RUN, [_leaf("gm", "d1", None, None, 2.0)]))
    before = dict(st_.nodes)
    bad = MessageOps(RUN, [_leaf("am", "d2", None, None, 1.0), MetricLeaf("gm", "SUM", "d2", None, None, {"": 1.0})])
    with pytest.raises(AggregateConflictError):
        apply_message(st_, bad)
    with pytest.raises(AggregateDomainError):
        apply_message(st_, MessageOps(RUN, [_leaf("am", "d3", None, None, 1.0), _leaf("gm", "d3", None, None, -1.0)]))
    assert st_.nodes == before and ("run1", "am") not in st_.metric_defs


# ---- property test: random event sequences vs. from-scratch recomputation -----------------

DRS = ["d1", "d2", "d3", "d4"]
PLACES = [(None, None), ("cat", None), ("dog", None), ("cat", "tall"), ("cat", "short"), ("dog", "big")]
CONF = ["0.25", "0.5", "0.75"]


@st.composite
def scalar(draw: st.DrawFn, metric: str) -> float:
    if metric in ("gm", "hm"):
        return draw(st.one_of(st.just(0.0), st.floats(1e-6, 1e8)))
    return draw(st.one_of(st.just(0.0), st.floats(-1e8, 1e8, allow_nan=False)))


@st.composite
def metric_value(draw: st.DrawFn, metric: str) -> Any:
    def one() -> Any:
        if metric == "cm":
            return [draw(st.integers(0, 10**10)) for _ in range(4)]
        return draw(scalar(metric))

    if draw(st.booleans()):
        keys = draw(st.lists(st.sampled_from(CONF), min_size=2, max_size=3, unique=True))
        return {k: one() for k in keys}
    return one()


@st.composite
def metric_leaf(draw: st.DrawFn, allowed: list[str] | None = None) -> MetricLeaf:
    metric = draw(st.sampled_from(allowed or list(METRICS)))
    dr = draw(st.sampled_from(DRS))
    f, s = draw(st.sampled_from(PLACES))
    return _leaf(metric, dr, f, s, draw(metric_value(metric)))


@st.composite
def message(draw: st.DrawFn) -> MessageOps:
    if draw(st.booleans()):
        return MessageOps(RUN, draw(st.lists(metric_leaf(), min_size=1, max_size=4)))
    anns = []
    for _ in range(draw(st.integers(1, 2))):
        uuid = draw(st.sampled_from(["u1", "u2", "u3"]))
        leaves = draw(st.lists(metric_leaf(["am"]), max_size=3))
        anns.append(AnnotationUpdate(uuid, tuple(leaves)))
    return MessageOps(RUN, annotations=anns)


def reference_leaves(messages: list[MessageOps]) -> Leaves:
    leaves: Leaves = {}
    for msg in messages:
        for leaf in msg.metric_rows:
            leaves[(leaf.metric, leaf.data_row, leaf.feature, leaf.subclass, "m")] = dict(leaf.value)
        for ann in msg.annotations:
            src = "u:" + ann.uuid
            for k in [k for k in leaves if k[4] == src]:
                del leaves[k]
            for leaf in ann.leaves:
                leaves[(leaf.metric, leaf.data_row, leaf.feature, leaf.subclass, src)] = dict(leaf.value)
    return leaves


def _ref_key(level: int, f: str, s: str) -> tuple[str | None, str | None]:
    return (None, None) if level == 0 else (f, None) if level == 1 else (f, s)


@settings(max_examples=150, deadline=None)
@given(st.lists(message(), min_size=1, max_size=25))
def test_incremental_equals_recomputation(messages: list[MessageOps]) -> None:
    state = MemoryState()
    accepted: list[MessageOps] = []
    for msg in messages:
        try:
            apply_message(state, msg)
        except (AggregateConflictError, AggregateDomainError):
            continue
        accepted.append(msg)
    defs = {m: a for (_r, m), a in state.metric_defs.items()}
    leaves = reference_leaves(accepted)
    expected_nodes = node_values(leaves, defs)
    got_nodes = {
        (m, ck, dr, *_ref_key(level, f, s)): v for (_r, m, ck, dr, level, f, s), v in state.nodes.items()
    }
    assert set(got_nodes) == set(expected_nodes)
    for k, v in expected_nodes.items():
        assert close(got_nodes[k], v), (k, got_nodes[k], v)
    expected_run = run_values(leaves, defs)
    got_run = {
        (m, ck, *_ref_key(level, f, s)): (a.result(defs[m]), a.n)
        for (_r, m, ck, level, f, s), a in state.run_aggs.items()
    }
    assert set(got_run) == set(expected_run)
    for k, (v, n) in expected_run.items():
        assert got_run[k][1] == n and close(got_run[k][0], v), (k, got_run[k], v, n)
    # nothing left behind once the sets are empty
    assert all(not math.isnan(float(a.n)) for a in state.run_aggs.values())
    # a store keeps only the leaves: rebuilding a tree from them gives the very same nodes, exactly
    for (_r, m, _dr), tree in state.trees.items():
        assert tree.leaves, "a tree without leaves must have been deleted"
        assert tree_from_leaves(dict(tree.leaves), defs[m]).nodes == tree.nodes


@settings(max_examples=150, deadline=None)
@given(st.lists(message(), min_size=1, max_size=25), st.lists(st.integers(1, 8), min_size=1, max_size=25))
def test_batches_equal_one_message_at_a_time(messages: list[MessageOps], cuts: list[int]) -> None:
    """apply_batch over any chunking (writes to one leaf collapsed, rejected messages in between,
    annotations replaced within a chunk) leaves exactly the state of applying message by message."""
    one, batched = MemoryState(), MemoryState()
    rejected_one: list[int] = []
    for i, msg in enumerate(messages):
        try:
            apply_message(one, msg)
        except (AggregateConflictError, AggregateDomainError):
            rejected_one.append(i)
    rejected_batched: list[int] = []
    start, k = 0, 0
    while start < len(messages):
        size = cuts[k % len(cuts)]
        rejected_batched += [start + i for i, _exc in apply_batch(batched, messages[start : start + size])]
        start, k = start + size, k + 1
    assert rejected_batched == rejected_one
    assert batched.leaves == one.leaves
    assert batched.nodes == one.nodes
    assert batched.run_aggs == one.run_aggs
    assert batched.metric_defs == one.metric_defs
    assert batched.annotations == one.annotations
