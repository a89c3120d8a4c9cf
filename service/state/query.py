"""The read-only side of the state store: what the query API and the trend history read.

:class:`StateReader` is the interface (the HTTP API depends on it alone); :class:`StateQueries`
implements it over the store's SQL (mixed into :class:`~service.state.store.SqlStateBackend`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol, cast

import orjson

from service.aggregation import (
    Agg,
    Value,
)
from service.events.constants import Aggregation
from service.state.codec import ROOT


class NodeRow(NamedTuple):
    """A node as queries see it (a tuple: a filter over 1,000 data rows builds thousands)."""

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
    def nodes_in_range(
        self, run: str, metric: str, ck: str, level: int, f: str, s: str, lo: float | None, hi: float | None
    ) -> list[NodeRow]: ...
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

    def nodes_for_rows(self, run: str, rows: Sequence[str]) -> list[NodeRow]:
        """Every node value of every tree of ``rows`` (primary key prefix run, dr)."""
        out: list[NodeRow] = []
        for i in range(0, len(rows), 500):
            chunk = list(rows[i : i + 500])
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT metric, dr, tree FROM rs_trees WHERE run=? AND dr IN ({marks})"
            _add_nodes(out, self._all(sql, [run, *chunk]))
        return out

    def _range_where(
        self, run: str, metric: str, ck: str, level: int, f: str, s: str, lo: float | None, hi: float | None
    ) -> tuple[str, str, list[Any]]:
        """(table, WHERE clause, parameters) of the index rows whose node value is in [lo, hi].

        An index range scan either way: the data row's plain value is ``rs_trees.num``
        (rs_trees_by_value), every other node's is in rs_node_nums (its primary key).
        """
        if (ck, level, f, s) == ROOT:
            table, where = "rs_trees", "i.run=? AND i.metric=? AND i.num IS NOT NULL"
            params: list[Any] = [run, metric]
        else:
            table, where = "rs_node_nums", "i.run=? AND i.metric=? AND i.ck=? AND i.lvl=? AND i.f=? AND i.s=?"
            params = [run, metric, ck, level, f, s]
        if lo is not None:
            where += " AND i.num >= ?"
            params.append(lo)
        if hi is not None:
            where += " AND i.num <= ?"
            params.append(hi)
        return table, where, params

    def rows_in_range(
        self, run: str, metric: str, ck: str, level: int, f: str, s: str, lo: float | None, hi: float | None
    ) -> list[str]:
        """Data rows whose node (ck, level, f, s) has a numeric value in [lo, hi]."""
        table, where, params = self._range_where(run, metric, ck, level, f, s, lo, hi)
        return [r[0] for r in self._all(f"SELECT i.dr FROM {table} i WHERE {where}", params)]

    def nodes_in_range(
        self, run: str, metric: str, ck: str, level: int, f: str, s: str, lo: float | None, hi: float | None
    ) -> list[NodeRow]:
        """Every node value of every tree of the data rows :meth:`rows_in_range` selects.

        One statement: the index range scan joined to the trees by primary key (run, dr), so
        the selected data rows never travel through Python and back as parameters.
        """
        table, where, params = self._range_where(run, metric, ck, level, f, s, lo, hi)
        sql = (
            f"SELECT t.metric, t.dr, t.tree FROM {table} i JOIN rs_trees t ON t.run = i.run AND t.dr = i.dr "
            f"WHERE {where}"
        )
        out: list[NodeRow] = []
        _add_nodes(out, self._all(sql, params))
        return out

    def known_rows(self, run: str, rows: Sequence[str]) -> list[str]:
        return sorted({n.data_row for n in self.nodes_for_rows(run, rows)})


def _add_nodes(out: list[NodeRow], trees: Iterable[tuple[str, str, Any]]) -> None:
    """Append the node values of stored trees given as (metric, data row, tree JSON) rows.

    Only the node part of a tree becomes objects; a float value (the common case) is taken as
    parsed, anything else is converted as :func:`~service.state.codec.tree_node_values` does.
    """
    add = out.append
    for m, dr, tree in trees:
        for (ck, lvl, f, s), v in orjson.loads(tree)[2]:
            add(NodeRow(m, ck, dr, lvl, f, s, v if type(v) is float else _node_value(v)))


def _node_value(v: Any) -> Value | None:
    if v is None:
        return None
    if type(v) is list:
        return (int(v[0]), int(v[1]), int(v[2]), int(v[3]))
    return float(v)

