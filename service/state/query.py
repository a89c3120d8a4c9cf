"""The read-only side of the state store: what the query API and the trend history read.

:class:`StateReader` is the interface (the HTTP API depends on it alone); :class:`StateQueries`
implements it over the store's SQL (mixed into :class:`~service.state.store.SqlStateBackend`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from service.aggregation import (
    Agg,
    Value,
)
from service.events.constants import Aggregation
from service.state.codec import ROOT, tree_node_values


@dataclass(frozen=True)
class NodeRow:
    """A node as queries see it."""

    metric: str
    ck: str
    data_row: str
    level: int
    feature: str
    subclass: str
    value: Value | None


class StateReader(Protocol):
    """What readers of the aggregates use."""

    def list_runs(self) -> list[tuple[str, float]]: ...
    def run_exists(self, run: str) -> bool: ...
    def metric_defs(self, run: str) -> dict[str, Aggregation]: ...
    def run_aggs(self, run: str) -> list[tuple[str, str, int, str, str, Agg]]: ...
    def nodes_for_rows(self, run: str, rows: Sequence[str]) -> list[NodeRow]: ...
    def rows_in_range(
        self, run: str, metric: str, ck: str, level: int, f: str, s: str, lo: float | None, hi: float | None
    ) -> list[str]: ...
    def known_rows(self, run: str, rows: Sequence[str]) -> list[str]: ...


class StateQueries:
    """The queries over the store's tables; the store supplies :meth:`_one` and :meth:`_all`."""

    def _one(self, sql: str, params: Sequence[Any]) -> Any:
        raise NotImplementedError

    def _all(self, sql: str, params: Sequence[Any]) -> list[Any]:
        raise NotImplementedError


    def list_runs(self) -> list[tuple[str, float]]:
        return [(r, float(t)) for r, t in self._all("SELECT run, updated_at FROM rs_runs ORDER BY run", ())]

    def run_exists(self, run: str) -> bool:
        return self._one("SELECT 1 FROM rs_runs WHERE run=?", (run,)) is not None

    def metric_defs(self, run: str) -> dict[str, Aggregation]:
        rows = self._all("SELECT metric, aggregation FROM rs_metric_defs WHERE run=?", (run,))
        return {m: cast(Aggregation, a) for m, a in rows}

    def run_aggs(self, run: str) -> list[tuple[str, str, int, str, str, Agg]]:
        rows = self._all("SELECT metric, ck, lvl, f, s, agg FROM rs_run_aggs WHERE run=?", (run,))
        return [(m, ck, int(lvl), f, s, Agg.decode(a)) for m, ck, lvl, f, s, a in rows]

    def _trees_of_rows(self, run: str, rows: Sequence[str]) -> list[tuple[str, str, Any]]:
        """(metric, data row, tree blob) of every tree of ``rows`` (primary key prefix run, dr)."""
        out: list[tuple[str, str, Any]] = []
        for i in range(0, len(rows), 500):
            chunk = list(rows[i : i + 500])
            marks = ",".join("?" * len(chunk))
            out += self._all(f"SELECT metric, dr, tree FROM rs_trees WHERE run=? AND dr IN ({marks})", [run, *chunk])
        return out

    def nodes_for_rows(self, run: str, rows: Sequence[str]) -> list[NodeRow]:
        return [
            NodeRow(m, ck, dr, int(lvl), f, s, v)
            for m, dr, tree in self._trees_of_rows(run, rows)
            for ck, lvl, f, s, v in tree_node_values(tree)
        ]

    def rows_in_range(
        self, run: str, metric: str, ck: str, level: int, f: str, s: str, lo: float | None, hi: float | None
    ) -> list[str]:
        """Data rows whose node (ck, level, f, s) has a numeric value in [lo, hi].

        An index range scan either way: the data row's plain value is ``rs_trees.num``
        (rs_trees_by_value), every other node's is in rs_node_nums (its primary key).
        """
        if (ck, level, f, s) == ROOT:
            sql = "SELECT dr FROM rs_trees WHERE run=? AND metric=? AND num IS NOT NULL"
            params: list[Any] = [run, metric]
        else:
            sql = "SELECT dr FROM rs_node_nums WHERE run=? AND metric=? AND ck=? AND lvl=? AND f=? AND s=?"
            params = [run, metric, ck, level, f, s]
        if lo is not None:
            sql += " AND num >= ?"
            params.append(lo)
        if hi is not None:
            sql += " AND num <= ?"
            params.append(hi)
        return [r[0] for r in self._all(sql, params)]

    def known_rows(self, run: str, rows: Sequence[str]) -> list[str]:
        return sorted({dr for _m, dr, tree in self._trees_of_rows(run, rows) if tree_node_values(tree)})

