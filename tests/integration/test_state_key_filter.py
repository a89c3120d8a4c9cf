"""The stored-key filter of CachedState on SQLite: prefetch skips the store for tree and annotation
keys the filter rules out, and never for a key the store holds (stored before the filter was
built, written by this cache, read by a point load, or stored by another connection before a reset).
Real SQLite files; the aggregates after each step are read back from the store.
"""

from __future__ import annotations

import random
from pathlib import Path

from service.aggregation import AnnotationUpdate, MessageOps, MetricLeaf, apply_message
from service.state import CachedState, SqlStateBackend
from service.state.cache import KeyFilter

GROUP = "agg"
P0 = ("runstream.metrics", 0)


def _sum_leaf(dr: str, value: float) -> MetricLeaf:
    return MetricLeaf("m", "SUM", dr, None, None, {"": value})


def _total(backend: SqlStateBackend) -> float | None:
    for metric, ck, level, _f, _s, agg in backend.run_aggs("r"):
        if (metric, ck, level) == ("m", "", 0):
            value = agg.result("SUM")
            assert isinstance(value, float)
            return value
    return None


class _Writer:
    """Applies messages through one CachedState and commits each step (offsets 1, 2, ...)."""

    def __init__(self, backend: SqlStateBackend, state: CachedState) -> None:
        self.backend, self.state, self.n = backend, state, 0

    def step(self, *ops: MessageOps, prefetch: bool = True) -> None:
        if prefetch:
            self.state.prefetch(ops)
        for o in ops:
            apply_message(self.state, o)
        self.n += 1
        stored = self.backend.load_offsets(GROUP, [P0]).get(P0)
        self.backend.commit(GROUP, self.state.take_changes(), {P0: self.n}, {P0: stored})
        self.state.committed()


def test_key_filter_has_no_false_negatives() -> None:
    rnd = random.Random(3)
    keys = [("r", "m", f"id:{rnd.random()}") for _ in range(50_000)]
    f = KeyFilter(bits_log2=20)
    for k in keys[:25_000]:
        f.add(k)
    assert all(k in f for k in keys[:25_000])
    absent = sum(k not in f for k in keys[25_000:])
    assert absent > 20_000  # most never-added keys are ruled out
    k = ("r", "m", "id:new")
    assert k not in f and not f.check_add(k) and f.check_add(k) and k in f


def test_prefetch_skips_new_keys_and_finds_stored_ones(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    backend = SqlStateBackend.sqlite(path)
    try:
        w = _Writer(backend, CachedState(backend))
        w.step(*(MessageOps("r", metric_rows=[_sum_leaf(f"id:d{i}", 1.0)]) for i in range(100)))
        w.step(MessageOps("r", annotations=[AnnotationUpdate("u1", (_sum_leaf("id:p", 5.0),))]))
        # an empty store: no tree or annotation asked for (only the metric definition and run aggregates)
        assert w.state.filtered == 102 and w.state.loads < 10
        assert _total(backend) == 105.0
    finally:
        backend.close()
    # A new process on the same file: the filter is built from what is stored.
    backend = SqlStateBackend.sqlite(path)
    try:
        w = _Writer(backend, CachedState(backend))
        w.state.max_clean = 0  # every committed row is evicted: later reads go back to the store
        replace = [MessageOps("r", metric_rows=[_sum_leaf(f"id:d{i}", 2.0)]) for i in range(0, 100, 10)]
        new = [MessageOps("r", metric_rows=[_sum_leaf(f"id:n{i}", 1.0)]) for i in range(50)]
        w.step(*replace, *new, MessageOps("r", annotations=[AnnotationUpdate("u1", (_sum_leaf("id:q", 7.0),))]))
        assert w.state.loads >= 12  # the 10 replaced trees and the annotation were read (and its old tree)
        assert w.state.filtered >= 40  # most of the 50 new trees were not
        assert _total(backend) == 100.0 + 10 + 50 + 7.0  # replacements, new rows, the moved annotation
        # Keys this cache wrote and then evicted are read from the store again.
        loads = w.state.loads
        w.step(*(MessageOps("r", metric_rows=[_sum_leaf(f"id:n{i}", 3.0)]) for i in range(50)))
        assert w.state.loads >= loads + 50
        assert _total(backend) == 100.0 + 10 + 150 + 7.0
    finally:
        backend.close()


def test_a_key_read_by_a_point_load_is_remembered(tmp_path: Path) -> None:
    backend = SqlStateBackend.sqlite(tmp_path / "s.sqlite3")
    try:
        w = _Writer(backend, CachedState(backend, max_clean=0))
        w.step(MessageOps("r", metric_rows=[_sum_leaf("id:b", 1.0)]))  # builds the filter
        w.step(MessageOps("r", metric_rows=[_sum_leaf("id:a", 1.0)]), prefetch=False)  # point loads only
        w.step(MessageOps("r", metric_rows=[_sum_leaf("id:a", 4.0)]))  # evicted: prefetch must read it
        assert _total(backend) == 5.0
    finally:
        backend.close()


def test_reset_rebuilds_from_what_another_replica_stored(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    a, b = SqlStateBackend.sqlite(path), SqlStateBackend.sqlite(path)
    try:
        wa = _Writer(a, CachedState(a))
        wa.step(MessageOps("r", metric_rows=[_sum_leaf("id:x", 1.0)]))
        # b takes the partition over and stores a tree a's filter has never seen
        wb = _Writer(b, CachedState(b))
        wb.n = wa.n
        wb.step(MessageOps("r", metric_rows=[_sum_leaf("id:y", 2.0)]))
        # a gets the partition back: its cache (and filter) start from the store again
        wa.state.reset()
        wa.n = wb.n
        wa.step(MessageOps("r", metric_rows=[_sum_leaf("id:y", 5.0)]))
        assert _total(a) == 6.0  # y replaced (2 -> 5), not added next to the stored one
    finally:
        a.close()
        b.close()
