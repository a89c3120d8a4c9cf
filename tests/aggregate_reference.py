"""From-scratch recomputation of DESIGN §4 aggregates, written independently of service.aggregation.

Tests feed it the *current* set of leaves (after replacements) and compare whatever the
aggregator reports against it. It recomputes everything with ``math.fsum`` every time, no deltas.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

# leaf: (metric, data_row, feature | None, subclass | None, source) -> {conf_key: value}
Leaves = dict[tuple[str, str, str | None, str | None, str], dict[str, Any]]


def agg(values: list[Any], aggregation: str) -> Any:
    if not values:
        return None
    if aggregation == "CONFUSION_MATRIX":
        return tuple(sum(v[i] for v in values) for i in range(4))
    if aggregation == "SUM":
        return math.fsum(values)
    if aggregation == "ARITHMETIC_MEAN":
        return math.fsum(values) / len(values)
    if any(v == 0 for v in values):
        return 0.0
    if aggregation == "GEOMETRIC_MEAN":
        return math.exp(math.fsum(math.log(v) for v in values) / len(values))
    return len(values) / math.fsum(1.0 / v for v in values)


def node_values(leaves: Leaves, defs: dict[str, str], rows: Iterable[str] | None = None) -> dict[tuple[Any, ...], Any]:
    """(metric, ck, data_row, feature|None, subclass|None) -> node value, explicit beating roll-up."""
    keep = set(rows) if rows is not None else None
    direct: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
    for (metric, dr, f, s, _src), value in leaves.items():
        if keep is not None and dr not in keep:
            continue
        for ck, v in value.items():
            direct[(metric, ck, dr, f, s)].append(v)
    out: dict[tuple[Any, ...], Any] = {}
    subclass_nodes = {k for k in direct if k[4] is not None}
    for k in subclass_nodes:
        out[k] = agg(direct[k], defs[k[0]])
    feature_nodes = {k for k in direct if k[3] is not None and k[4] is None} | {
        (m, ck, dr, f, None) for (m, ck, dr, f, _s) in subclass_nodes
    }
    for k in feature_nodes:
        m, ck, dr, f, _ = k
        if direct.get(k):
            out[k] = agg(direct[k], defs[m])
        else:
            children = [out[c] for c in subclass_nodes if c[:4] == (m, ck, dr, f)]
            out[k] = agg(children, defs[m])
    row_nodes = {k for k in direct if k[3] is None} | {(m, ck, dr, None, None) for (m, ck, dr, _f, _s) in feature_nodes}
    for k in row_nodes:
        m, ck, dr, _, _ = k
        if direct.get(k):
            out[k] = agg(direct[k], defs[m])
        else:
            children = [out[c] for c in feature_nodes if c[:3] == (m, ck, dr)]
            out[k] = agg(children, defs[m])
    return out


def run_values(
    leaves: Leaves, defs: dict[str, str], rows: Iterable[str] | None = None
) -> dict[tuple[Any, ...], tuple[Any, int]]:
    """(metric, ck, feature|None, subclass|None) -> (value across data rows, count of data rows)."""
    groups: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
    for (m, ck, _dr, f, s), v in node_values(leaves, defs, rows).items():
        groups[(m, ck, f, s)].append(v)
    return {k: (agg(vs, defs[k[0]]), len(vs)) for k, vs in groups.items()}


def close(a: Any, b: Any, rel: float = 1e-9) -> bool:
    if isinstance(a, list | tuple) or isinstance(b, list | tuple):
        return a is not None and b is not None and list(a) == list(b)
    if a is None or b is None:
        return a is b
    return bool(abs(a - b) <= rel * max(abs(a), abs(b)) or abs(a - b) < 1e-300)
