"""The stored forms of aggregator state: tree rows, run-aggregate rows, and a commit's changes.

A tree row holds one (run, data row, metric) tree as JSON (leaves and node values); a run
aggregate is :meth:`~service.aggregation.Agg.encode` text. :class:`Changes` is what one commit
writes, :class:`EncodedChanges` the same as row tuples ready for the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from service.aggregation import (
    LEVEL_DATA_ROW,
    Agg,
    AnnotationLeaf,
    LeafSub,
    LeafValue,
    NodeMove,
    NodeSub,
    RunAggKey,
    Tree,
    TreeKey,
    Value,
    f1,
    numeric_value,
)
from service.events.constants import Aggregation

# --------------------------------------------------------------------------------------------
# the stored unit: one data row's metric tree (service.aggregation.Tree), one row each.
# Why: a metric row touches its leaf, its node and the node's ancestors — all in one tree —
# so a tree row is ~3x fewer rows to load, encode and write per event than a row per leaf and
# node, and a slice query reads a data row's trees.

def _tree_json(t: Tree) -> str:
    """JSON ``[aggregation, [[[level, f, s, src], {ck: value}]...], [[[ck, level, f, s], value]...]]``.

    The leaves are what the tree is rebuilt from, the node values are what queries read and what
    a loaded tree starts from. Confusion matrices are arrays (orjson writes tuples as arrays).
    Text, not orjson's bytes: each small bytes object orjson returns pins a ~4 KB buffer (80 MB
    per 20k trees, measured), the decoded str is compact.
    """
    return orjson.dumps([t.aggregation, list(t.leaves.items()), list(t.nodes.items())]).decode()


def _value(v: Any) -> Value | None:
    if v is None or type(v) is float:
        return cast(Value | None, v)
    if type(v) is list:
        return (int(v[0]), int(v[1]), int(v[2]), int(v[3]))
    return float(v)


def decode_tree(raw: bytes | str) -> Tree:
    """A stored tree; its node values are the stored ones (what the node-value index holds)."""
    aggregation, leaves_json, values = orjson.loads(raw)
    leaves: dict[LeafSub, LeafValue] = {}
    for (lvl, f, s, src), v in leaves_json:
        leaves[(lvl, f, s, src)] = {ck: v if type(v) is float else cast(Value, _value(v)) for ck, v in v.items()}
    nodes: dict[NodeSub, Value] = {}
    for (ck, lvl, f, s), v in values:
        if v is not None:
            nodes[(ck, lvl, f, s)] = v if type(v) is float else cast(Value, _value(v))
    return Tree(leaves, nodes, aggregation)


def tree_node_values(raw: bytes | str) -> list[tuple[str, int, str, str, Value | None]]:
    """Only the node values of a stored tree (what queries read): (ck, level, f, s, value)."""
    return [(ck, lvl, f, s, _value(v)) for (ck, lvl, f, s), v in orjson.loads(raw)[2]]

ROOT = ("", LEVEL_DATA_ROW, "", "")  # the data-row node of the plain (not confidence-keyed) value

def _num(v: Value) -> float | None:
    """The indexed number of a node value (None: not comparable, e.g. F1 undefined, or NaN)."""
    if type(v) is float:
        return v if v == v else None
    if type(v) is tuple:  # a confusion matrix compares as its F1
        return f1(v)
    num = numeric_value(v)
    return num if num is not None and num == num else None


@dataclass
class Changes:
    """Everything to write in one commit; ``None`` values are deletions.

    ``nums``: per node below the data row whose value changed, (the number the store holds, the
    number it should hold); the first change keeps the stored side, later ones update the other.
    """

    trees: dict[TreeKey, Tree | None] = field(default_factory=dict)
    run_aggs: dict[RunAggKey, Agg | None] = field(default_factory=dict)
    metric_defs: dict[tuple[str, str], Aggregation] = field(default_factory=dict)
    annotations: dict[tuple[str, str], tuple[AnnotationLeaf, ...] | None] = field(default_factory=dict)
    runs: set[str] = field(default_factory=set)
    nums: dict[tuple[TreeKey, NodeSub], tuple[float | None, float | None]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.trees) + len(self.run_aggs) + len(self.metric_defs) + len(self.annotations)

    def note_moves(self, key: TreeKey, moves: list[NodeMove]) -> None:
        """Record node value changes of one tree for the node-value index."""
        nums = self.nums
        for sub, ov, nv in moves:
            if sub == ROOT:
                continue  # the data row's plain value is rs_trees.num, written with the tree
            nk = (key, sub)
            was = nums.get(nk)
            new = None if nv is None else _num(nv)
            nums[nk] = ((None if ov is None else _num(ov)) if was is None else was[0], new)

    def encode(self) -> EncodedChanges:
        """Immutable row tuples; after this the live objects may change without affecting the write."""
        enc = EncodedChanges(now=time.time())
        enc.runs = sorted(self.runs)
        enc.metric_defs = [(r, m, a) for (r, m), a in self.metric_defs.items()]
        up, dels = enc.tree_up, enc.tree_del
        root_key = ROOT
        for key, t in self.trees.items():
            if t is None or (not t.leaves and not t.nodes):
                dels.append(key)
                continue
            root = t.nodes.get(root_key)
            up.append((*key, _tree_json(t), None if root is None else _num(root)))
        nv_up, nv_del = enc.nv_up, enc.nv_del
        for ((run, metric, dr), (ck, lvl, f, s)), (old, new) in self.nums.items():
            if old == new:
                continue
            if old is not None:
                nv_del.append((run, metric, ck, lvl, f, s, old, dr))
            if new is not None:
                nv_up.append((run, metric, ck, lvl, f, s, new, dr))
        _split(self.run_aggs, enc.ragg_up, enc.ragg_del, lambda a: (a.encode(),))
        _split(self.annotations, enc.ann_up, enc.ann_del, lambda leaves: (orjson.dumps(leaves).decode(),))
        return enc


@dataclass
class EncodedChanges:
    """:class:`Changes` as rows ready for executemany (upserts and deletes per table)."""

    now: float = 0.0
    runs: list[str] = field(default_factory=list)
    metric_defs: list[tuple[str, str, str]] = field(default_factory=list)
    tree_up: list[tuple[Any, ...]] = field(default_factory=list)
    tree_del: list[tuple[Any, ...]] = field(default_factory=list)
    ragg_up: list[tuple[Any, ...]] = field(default_factory=list)
    ragg_del: list[tuple[Any, ...]] = field(default_factory=list)
    ann_up: list[tuple[Any, ...]] = field(default_factory=list)
    ann_del: list[tuple[Any, ...]] = field(default_factory=list)
    nv_up: list[tuple[Any, ...]] = field(default_factory=list)  # new node-value rows (full key)
    nv_del: list[tuple[Any, ...]] = field(default_factory=list)  # node-value rows to remove (full key)

    def __len__(self) -> int:
        return (
            len(self.metric_defs)
            + len(self.tree_up)
            + len(self.tree_del)
            + len(self.nv_up)
            + len(self.nv_del)
            + len(self.ragg_up)
            + len(self.ragg_del)
            + len(self.ann_up)
            + len(self.ann_del)
        )


def _split(
    items: dict[Any, Any], up: list[tuple[Any, ...]], dels: list[tuple[Any, ...]], enc: Callable[[Any], tuple[Any, ...]]
) -> None:
    for key, value in items.items():
        if value is None:
            dels.append(key)
        else:
            up.append((*key, *enc(value)))


