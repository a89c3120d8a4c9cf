"""The query side of the state store (service.state.query) against the engine's own node values.

A store is filled through the real path (apply_message on a CachedState, SqlStateBackend.commit) while
the same messages go to a MemoryState; every node value the queries return must be one the engine holds,
and the one-statement filter (nodes_in_range) must return exactly the trees of the rows rows_in_range
selects. Random streams mix every aggregation, confidence keys, the three levels and replacements.
"""

from __future__ import annotations

import os
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.aggregation import MemoryState, MessageOps, MetricLeaf, Value, apply_message, numeric_value
from service.state import CachedState, NodeRow, SqlStateBackend, tree_node_values
from service.state.store import QUERY_MMAP_BYTES

METRICS = {"am": "ARITHMETIC_MEAN", "gm": "GEOMETRIC_MEAN", "sum": "SUM", "cm": "CONFUSION_MATRIX"}
FEATURES = (None, "cat", "dog")
SUBCLASSES = (None, "tall")


def _value(rng: random.Random, aggregation: str) -> Value:
    if aggregation == "CONFUSION_MATRIX":
        return tuple(rng.randint(0, 3) for _ in range(4))  # type: ignore[return-value]  # F1 may be undefined
    return float(rng.choice([0.0, 0.25, 0.5, 1.0, 2.0, 7.5]))


def _leaf(rng: random.Random, rows: int) -> MetricLeaf:
    metric = rng.choice(list(METRICS))
    aggregation = METRICS[metric]
    f = rng.choice(FEATURES)
    s = rng.choice(SUBCLASSES) if f is not None else None
    keys = rng.choice([[""], [""], ["0.5"], ["", "0.5", "0.9"]])
    dr = f"{rng.choice(['id', 'gk'])}:d{rng.randrange(rows)}"
    return MetricLeaf(metric, aggregation, dr, f, s, {k: _value(rng, aggregation) for k in keys})  # type: ignore[arg-type]


def _fill(backend: SqlStateBackend, run: str, seed: int, rows: int = 40, messages: int = 60) -> MemoryState:
    rng = random.Random(seed)
    mem = MemoryState()
    part = (f"t-{run}", 0)
    for n in range(1, messages + 1):
        ops = MessageOps(run, metric_rows=[_leaf(rng, rows) for _ in range(rng.randint(1, 4))])
        apply_message(mem, ops)
        state = CachedState(backend)  # a fresh cache: every commit diffs against what is stored
        state.prefetch([ops])
        apply_message(state, ops)
        backend.commit("g", state.take_changes(), {part: n}, {part: n - 1 if n > 1 else None})
    return mem


def _as_node_rows(mem: MemoryState, rows: set[str] | None = None) -> Counter[NodeRow]:
    return Counter(
        NodeRow(m, ck, dr, lvl, f, s, v)
        for (_r, m, ck, dr, lvl, f, s), v in mem.nodes.items()
        if rows is None or dr in rows
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStateBackend]:
    if request.param == "postgres":
        dsn = os.environ.get("RUNSTREAM_TEST_POSTGRES_DSN")
        if not dsn:
            pytest.skip("RUNSTREAM_TEST_POSTGRES_DSN is not set (.ci/run starts a private PostgreSQL)")
        b = SqlStateBackend.postgres(dsn)
    else:
        b = SqlStateBackend.sqlite(tmp_path / "s.sqlite3", mmap_bytes=QUERY_MMAP_BYTES)  # as the query API reads
    yield b
    b.close()


@pytest.fixture
def run() -> str:
    return f"q-{uuid.uuid4().hex}"  # the PostgreSQL database is shared between tests and runs


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_slice_reads_the_engines_node_values(backend: SqlStateBackend, run: str, seed: int) -> None:
    mem = _fill(backend, run, seed)
    every = sorted({k[3] for k in mem.nodes})
    assert Counter(backend.nodes_for_rows(run, every)) == _as_node_rows(mem)
    some = [*every[::3], "id:nowhere"]
    assert Counter(backend.nodes_for_rows(run, some)) == _as_node_rows(mem, set(some))
    assert backend.known_rows(run, some) == sorted(set(every[::3]))
    # the decoding agrees with the codec's reading of the stored rows
    raw = backend._all("SELECT metric, dr, tree FROM rs_trees WHERE run=?", (run,))
    from_codec = Counter(
        NodeRow(m, ck, dr, lvl, f, s, v) for m, dr, t in raw for ck, lvl, f, s, v in tree_node_values(t)
    )
    assert from_codec == _as_node_rows(mem)


@pytest.mark.parametrize("seed", [4, 5])
def test_filter_in_one_statement_equals_rows_then_trees(backend: SqlStateBackend, run: str, seed: int) -> None:
    mem = _fill(backend, run, seed)
    nums: dict[tuple[Any, ...], list[float]] = {}
    for (_r, m, ck, _dr, lvl, f, s), v in mem.nodes.items():
        num = numeric_value(v)
        if num is not None:
            nums.setdefault((m, ck, lvl, f, s), []).append(num)
    assert any(k[2] for k in nums) and any(k[1] for k in nums)  # below the data row, and confidence keys
    checked = 0
    for (m, ck, lvl, f, s), values in sorted(nums.items()):
        mid = sorted(values)[len(values) // 2]
        for lo, hi in [(None, None), (mid, None), (None, mid), (mid, mid), (10.0, 20.0)]:
            rows = sorted(set(backend.rows_in_range(run, m, ck, lvl, f, s, lo, hi)))
            got = backend.nodes_in_range(run, m, ck, lvl, f, s, lo, hi)
            assert Counter(got) == Counter(backend.nodes_for_rows(run, rows)), (m, ck, lvl, f, s, lo, hi)
            assert sorted({n.data_row for n in got}) == rows
            assert Counter(got) == _as_node_rows(mem, set(rows))
            checked += bool(rows)
    assert checked > 20
