"""The bench's set-based floor (bench/bench_agg_floor.py SetFloor) computes the per-leaf floor's per-run aggregates.

The bench verifies both against the engine on its workload, which has no zeros, no rejected messages
and rarely rewrites a leaf twice in one batch; these streams do, and reopen the store half way.
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from bench_agg_floor import Floor, SetFloor  # noqa: E402

AGGS = {"am": "ARITHMETIC_MEAN", "sm": "SUM", "gm": "GEOMETRIC_MEAN", "hm": "HARMONIC_MEAN", "cm": "CONFUSION_MATRIX"}


def _event(rng: random.Random) -> bytes:
    run = f"run{rng.randrange(3)}"
    rows = []
    for _ in range(rng.randint(1, 4)):
        metric = rng.choice(list(AGGS))
        aggregation = AGGS[metric]
        if rng.random() < 0.02:  # conflicts with the metric's aggregation: the message is rejected
            aggregation = "SUM" if aggregation != "SUM" else "ARITHMETIC_MEAN"

        def one(aggregation: str = aggregation) -> Any:
            if aggregation == "CONFUSION_MATRIX":
                return [rng.randint(0, 5) for _ in range(4)]
            return rng.choice([0.0, 0.5, 1.0, 2.0, round(rng.uniform(0.01, 3.0), 3)])

        g = rng.random()
        row: dict[str, Any] = {
            "data_row": {"id": f"dr{rng.randrange(6)}"},
            "metric_name": metric,
            "aggregation": aggregation,
            "value": {str(c): one() for c in rng.sample([0.25, 0.5, 0.75], rng.randint(1, 3))}
            if rng.random() < 0.3
            else one(),
        }
        if g > 0.3:
            row["feature_name"] = rng.choice(["cat", "dog"])
        if g > 0.6:
            row["subclass_name"] = rng.choice(["small", "large"])
        rows.append(row)
    return json.dumps({"model_run_id": run, "metrics": rows}).encode()


def _floor_aggs(values: list[bytes], tmp: Path) -> tuple[dict[str, dict[str, list[Any]]], int]:
    fl = Floor(tmp / "floor.sqlite3")
    decode = msgspec.json.Decoder().decode
    for v in values:
        ev = decode(v)
        fl.apply(ev["model_run_id"], ev["metrics"])
    fl._pool.shutdown()
    fl.db.close()
    return {r: {k: a for k, a in aggs.items() if a[0] > 0} for r, aggs in fl.peer_aggs().items()}, fl.rejected


def _set_floor_aggs(values: list[bytes], path: Path, batch: int) -> tuple[dict[str, dict[str, list[Any]]], int]:
    rejected = 0
    half = len(values) // 2
    for part in (values[:half], values[half:]):  # reopened half way: keys come back from the store
        sf = SetFloor(path)
        for b in range(0, len(part), batch):
            sf.apply(sf.flatten(part[b : b + batch]))
        sf.positions[("t", 0)] = len(part)
        sf.commit(wait=True)
        rejected += sf.rejected
        sf.close()
    out = SetFloor.peer_aggs(path)
    return {r: {k: a for k, a in aggs.items() if a[0] > 0} for r, aggs in out.items()}, rejected


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_set_floor_equals_the_per_leaf_floor(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    values = [_event(rng) for _ in range(600)]
    want, want_rejected = _floor_aggs(values, tmp_path)
    got, got_rejected = _set_floor_aggs(values, tmp_path / "set.sqlite3", batch=97)
    assert want_rejected > 0
    assert got_rejected == want_rejected
    assert set(got) == set(want)
    zeros = 0
    for run, aggs in want.items():
        assert set(got[run]) == set(aggs), run
        for k, a in aggs.items():
            b = got[run][k]
            assert (b[0], b[1], list(b[3:])) == (a[0], a[1], list(a[3:])), (run, k, a, b)
            assert math.isclose(b[2], a[2], rel_tol=1e-9, abs_tol=1e-9), (run, k, a, b)
            zeros += a[1]
    assert zeros > 0  # the streams reach the zero rule of GM and HM


def test_a_rejected_message_does_not_fix_a_new_metrics_aggregation(tmp_path: Path) -> None:
    def ev(*rows: tuple[str, str]) -> bytes:
        metrics = [{"data_row": {"id": "dr1"}, "metric_name": m, "aggregation": a, "value": 0.5} for m, a in rows]
        return json.dumps({"model_run_id": "run", "metrics": metrics}).encode()

    values = [
        ev(("y", "ARITHMETIC_MEAN")),
        ev(("x", "SUM"), ("y", "SUM")),  # y conflicts: the whole message, x included, is rejected
        ev(("x", "ARITHMETIC_MEAN")),  # so x's aggregation is still free
    ]
    want, want_rejected = _floor_aggs(values, tmp_path)
    got, got_rejected = _set_floor_aggs(values, tmp_path / "set.sqlite3", batch=3)
    assert (want_rejected, got_rejected) == (1, 1)
    assert got == want
    assert "x||0||" in got["run"], got  # x entered as ARITHMETIC_MEAN
