"""Bounded time series of run-level and per-feature metric values, for the dashboard's trends.

The state store keeps only current aggregates; operators want to see a metric move. A
sampler reads the maintained aggregates (O(1) per metric, never the leaves) every few
seconds and appends to fixed-size rings, so memory is bounded by runs × series × points.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from service.aggregation import LEVEL_DATA_ROW, LEVEL_FEATURE, Agg, Value
from service.events.constants import DEFAULT_AGGREGATION, Aggregation

SeriesKey = tuple[str, str]  # (metric, feature or "" for the run level)


def scalar_of(value: Value | None) -> float | None:
    """The number a chart plots: the value itself, or F1 for a confusion matrix."""
    if value is None:
        return None
    if isinstance(value, tuple):
        tp, fp, _tn, fn = value
        denom = 2 * tp + fp + fn
        return (2 * tp / denom) if denom else None
    return value if math.isfinite(value) else None


@dataclass
class MetricHistory:
    max_points: int = 360
    max_runs: int = 50
    _runs: OrderedDict[str, dict[SeriesKey, deque[tuple[float, float]]]] = field(default_factory=OrderedDict)

    def record(self, run: str, at: float, values: Iterable[tuple[str, str, float | None]]) -> None:
        """Append one sample per (metric, feature); evict the least recently sampled run beyond max_runs."""
        series = self._runs.get(run)
        if series is None:
            series = self._runs[run] = {}
            while len(self._runs) > self.max_runs:
                self._runs.popitem(last=False)
        self._runs.move_to_end(run)
        for metric, feature, value in values:
            if value is None:
                continue
            ring = series.get((metric, feature))
            if ring is None:
                ring = series[(metric, feature)] = deque(maxlen=self.max_points)
            if ring and ring[-1][1] == value and at - ring[-1][0] < 60:
                continue  # unchanged: keep the chart's points meaningful and memory low
            ring.append((at, value))

    def series(self, run: str) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for (metric, feature), ring in sorted(self._runs.get(run, {}).items()):
            out.append({"metric": metric, "feature": feature or None, "points": [[t, v] for t, v in ring]})
        return out


def run_level_values(
    defs: dict[str, Aggregation], aggs: Iterable[tuple[str, str, int, str, str, Agg]]
) -> list[tuple[str, str, float | None]]:
    """(metric, feature, value) for the run level and each feature, from maintained aggregates."""
    out: list[tuple[str, str, float | None]] = []
    for metric, ck, level, feature, _subclass, agg in aggs:
        if ck != "" or level not in (LEVEL_DATA_ROW, LEVEL_FEATURE):
            continue
        value = agg.result(defs.get(metric, DEFAULT_AGGREGATION))
        out.append((metric, feature if level == LEVEL_FEATURE else "", scalar_of(value)))
    return out
