from __future__ import annotations

from service.api.metric_history import MetricHistory, scalar_of


def test_rings_are_bounded_and_skip_repeats() -> None:
    h = MetricHistory(max_points=3, max_runs=2)
    for t in range(10):
        h.record("r1", float(t), [("iou", "", t / 10), ("iou", "cat", 0.5)])
    s = {(x["metric"], x["feature"]): x["points"] for x in h.series("r1")}
    assert s[("iou", None)] == [[7.0, 0.7], [8.0, 0.8], [9.0, 0.9]]
    assert s[("iou", "cat")] == [[0.0, 0.5]]  # unchanged values are not repeated


def test_least_recent_run_is_evicted() -> None:
    h = MetricHistory(max_runs=2)
    h.record("a", 1.0, [("m", "", 1.0)])
    h.record("b", 2.0, [("m", "", 1.0)])
    h.record("a", 3.0, [("m", "", 2.0)])
    h.record("c", 4.0, [("m", "", 1.0)])
    assert h.series("b") == []
    assert h.series("a") and h.series("c")


def test_scalar_of_confusion_matrix_is_f1() -> None:
    assert scalar_of((8, 2, 5, 2)) == 2 * 8 / (16 + 2 + 2)
    assert scalar_of((0, 0, 5, 0)) is None
    assert scalar_of(float("nan")) is None
    assert scalar_of(0.25) == 0.25
