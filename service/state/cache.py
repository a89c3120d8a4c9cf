"""The write-back cache the aggregator's batch update runs against."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import orjson

from service.aggregation import (
    LEVEL_DATA_ROW,
    LEVEL_FEATURE,
    LEVEL_SUBCLASS,
    Agg,
    AnnotationLeaf,
    LeafKey,
    LeafValue,
    MessageOps,
    NodeKey,
    NodeMove,
    RunAggKey,
    Tree,
    TreeKey,
    Value,
)
from service.events.constants import Aggregation
from service.state.codec import Changes, decode_tree
from service.state.store import StateBackend

_MISSING: Any = object()


def _decode_tree_row(r: tuple[Any, ...]) -> tuple[Any, Any]:
    return (r[0], r[1], r[2]), decode_tree(r[3])


def _decode_ragg_row(r: tuple[Any, ...]) -> tuple[Any, Any]:
    return (r[0], r[1], r[2], int(r[3]), r[4], r[5]), Agg.decode(r[6])


def _decode_def_row(r: tuple[Any, ...]) -> tuple[Any, Any]:
    return (r[0], r[1]), r[2]


def _decode_ann_row(r: tuple[Any, ...]) -> tuple[Any, Any]:
    return (r[0], r[1]), tuple((m, dr, int(lvl), f, s) for m, dr, lvl, f, s in orjson.loads(r[2]))


class CachedState:
    """Write-back cache over a backend implementing :class:`~service.aggregation.StateAccess`.

    Leaves and nodes live in :class:`Tree` objects, one per (run, metric, data row): a
    leaf or node access finds its tree, a change marks the tree dirty. ``changes`` holds what
    changed since the last :meth:`take_changes` (always kept); the clean maps hold rows known
    to equal the store once the in-flight commit (if any) lands, or known absent (``None``).
    :meth:`prefetch` loads a whole batch's cold rows with one query per table, so the tree
    update itself never waits on the store. Above ``max_clean`` entries the oldest are
    evicted, but only when no commit is in flight: every row of an in-flight commit stays
    cached until it is durable, which is what lets loads read the store concurrently with
    that commit.
    """

    def __init__(self, backend: StateBackend, max_clean: int = 50_000) -> None:
        self.backend = backend
        self.max_clean = max_clean
        self.changes = Changes()
        self._trees: dict[TreeKey, Tree | None] = {}
        self._run_aggs: dict[RunAggKey, Agg | None] = {}
        self._defs: dict[tuple[str, str], Aggregation | None] = {}
        self._anns: dict[tuple[str, str], tuple[AnnotationLeaf, ...] | None] = {}
        self.loads = 0  # rows asked of the store (bulk and point), for benchmarks

    def __len__(self) -> int:
        return len(self._trees) + len(self._run_aggs) + len(self._defs) + len(self._anns)

    # point access (StateAccess); a miss here means prefetch did not foresee the key

    def _tree(self, tk: TreeKey) -> Tree | None:
        """Pending tree, else cached tree, else one backend read (counted: prefetch should have had it)."""
        t: Tree | None = self.changes.trees.get(tk, _MISSING)
        if t is _MISSING:
            t = self._trees.get(tk, _MISSING)
            if t is _MISSING:
                self.loads += 1
                t = self._trees[tk] = self.backend.load_tree(tk)
        return t

    def get_tree(self, key: TreeKey) -> Tree | None:
        return self._tree(key)

    def put_tree(self, key: TreeKey, tree: Tree, moves: list[NodeMove]) -> None:
        ch = self.changes
        ch.trees[key] = tree  # encoded at take time; an empty tree is a deletion
        ch.note_moves(key, moves)

    def get_leaf(self, key: LeafKey) -> LeafValue | None:
        """One leaf by its flat key (prefetch and tests)."""
        t = self._tree((key[0], key[1], key[2]))
        return None if t is None else t.leaves.get((key[3], key[4], key[5], key[6]))

    def get_node(self, key: NodeKey) -> Value | None:
        """One node value by its flat key (tests)."""
        t = self._tree((key[0], key[1], key[3]))
        return None if t is None else t.nodes.get((key[2], key[4], key[5], key[6]))

    def get_run_agg(self, key: RunAggKey) -> Agg | None:
        v = self.changes.run_aggs.get(key, _MISSING)
        if v is _MISSING:
            v = self._run_aggs.get(key, _MISSING)
            if v is _MISSING:
                self.loads += 1
                v = self._run_aggs[key] = self.backend.load_run_agg(key)
        return cast(Agg | None, v)

    def put_run_agg(self, key: RunAggKey, agg: Agg | None) -> None:
        self.changes.run_aggs[key] = agg

    def get_metric_def(self, run: str, metric: str) -> Aggregation | None:
        key = (run, metric)
        v = self.changes.metric_defs.get(key)
        if v is not None:
            return v
        v = self._defs.get(key, _MISSING)
        if v is _MISSING:
            self.loads += 1
            v = self._defs[key] = self.backend.load_metric_def(run, metric)
        return v

    def put_metric_def(self, run: str, metric: str, aggregation: Aggregation) -> None:
        self.changes.metric_defs[(run, metric)] = aggregation

    def get_annotation(self, run: str, uuid: str) -> tuple[AnnotationLeaf, ...] | None:
        key = (run, uuid)
        v = self.changes.annotations.get(key, _MISSING)
        if v is _MISSING:
            v = self._anns.get(key, _MISSING)
            if v is _MISSING:
                self.loads += 1
                v = self._anns[key] = self.backend.load_annotation(run, uuid)
        return cast(tuple[AnnotationLeaf, ...] | None, v)

    def put_annotation(self, run: str, uuid: str, leaves: tuple[AnnotationLeaf, ...] | None) -> None:
        self.changes.annotations[(run, uuid)] = leaves

    def touch_run(self, run: str) -> None:
        self.changes.runs.add(run)

    # bulk loading

    def prefetch(self, batch: Iterable[MessageOps]) -> None:
        """Load every row ``batch`` will read that is not cached: one query per table per phase.

        Rows read: the metric definitions, the annotation index, the tree of every leaf (new
        ones, and an annotation's old ones), and the run aggregate of every node a leaf of
        those trees sits at or under (a superset of what changes: run aggregates are few).
        """
        ch = self.changes
        defs: set[tuple[str, str]] = set()
        anns: set[tuple[str, str]] = set()
        trees: set[TreeKey] = set()
        # (run, metric, level, f, s, ck) of the new leaves: run aggregates do not depend on the
        # data row, so this stays small (a few thousand) however many data rows a batch touches
        places: set[tuple[str, str, int, str, str, str]] = set()
        for ops in batch:
            run = ops.run
            leaves = ops.metric_rows
            if ops.annotations:
                leaves = [*leaves, *(x for ann in ops.annotations for x in ann.leaves)]
                for ann in ops.annotations:
                    anns.add((run, ann.uuid))
            for metric, _aggregation, dr, f, s, value in leaves:
                defs.add((run, metric))
                trees.add((run, metric, dr))
                # MetricLeaf.level, inlined (once per leaf of every message)
                level = LEVEL_SUBCLASS if s is not None else LEVEL_DATA_ROW if f is None else LEVEL_FEATURE
                f, s = f or "", s or ""
                for ck in value:
                    places.add((run, metric, level, f, s, ck))
        self._load("rs_metric_defs", defs, ch.metric_defs, self._defs, _decode_def_row)
        self._load("rs_annotations", anns, ch.annotations, self._anns, _decode_ann_row)
        old_defs: set[tuple[str, str]] = set()
        for run, uuid in anns:
            old = ch.annotations.get((run, uuid), _MISSING)
            if old is _MISSING:
                old = self._anns.get((run, uuid))
            for metric, dr, _level, _f, _s in old or ():
                trees.add((run, metric, dr))
                old_defs.add((run, metric))  # removing an old leaf reads its metric's aggregation
        self._load("rs_metric_defs", old_defs, ch.metric_defs, self._defs, _decode_def_row)
        self._load("rs_trees", trees, ch.trees, self._trees, _decode_tree_row)
        for tk in trees:
            t = self._tree(tk)  # loaded now: never a point load
            if t is not None:
                run, metric, _dr = tk
                for (level, f, s, _src), value in t.leaves.items():
                    for ck in value:
                        places.add((run, metric, level, f, s, ck))
        raggs: set[RunAggKey] = set()
        for run, metric, level, f, s, ck in places:
            raggs.add((run, metric, ck, level, f, s))
            if level == LEVEL_SUBCLASS:
                raggs.add((run, metric, ck, LEVEL_FEATURE, f, ""))
            if level != LEVEL_DATA_ROW:
                raggs.add((run, metric, ck, LEVEL_DATA_ROW, "", ""))
        self._load("rs_run_aggs", raggs, ch.run_aggs, self._run_aggs, _decode_ragg_row)

    def _load(
        self,
        table: str,
        keys: Iterable[Any],
        dirty: dict[Any, Any],
        clean: dict[Any, Any],
        decode: Callable[[tuple[Any, ...]], tuple[Any, Any]],
    ) -> None:
        missing = [k for k in keys if k not in dirty and k not in clean]
        if not missing:
            return
        self.loads += len(missing)
        for row in self.backend.load_many(table, missing):
            k, v = decode(row)
            clean[k] = v
        for k in missing:
            if k not in clean:
                clean[k] = None

    # commit / reset

    def take_changes(self) -> Changes:
        """Hand the dirty set to a commit; call :meth:`committed` or :meth:`reset` afterwards.

        The changed rows move into the clean maps right away (newest last), so the next batch
        reads them from memory while the commit is written; if it fails, :meth:`reset` drops
        everything and the store is the truth again. Encode the returned changes before the
        next change is applied: trees are live objects.
        """
        ch, self.changes = self.changes, Changes()
        pairs: tuple[tuple[dict[Any, Any], dict[Any, Any]], ...] = (
            (ch.trees, self._trees),
            (ch.run_aggs, self._run_aggs),
            (ch.annotations, self._anns),
        )
        for d, clean in pairs:
            for k, v in d.items():
                clean.pop(k, None)
                clean[k] = v
        self._defs.update(ch.metric_defs)
        return ch

    def committed(self, ch: Changes | None = None) -> None:
        """The taken changes are durable: evict the oldest clean rows above ``max_clean``."""
        del ch
        total = len(self)
        excess = total - self.max_clean
        if excess <= 0:
            return
        for clean in (self._trees, self._run_aggs, self._defs, self._anns):
            n = min(len(clean), -(-excess * len(clean) // total))
            if n:
                for k in list(_take(clean, n)):
                    del clean[k]

    def reset(self) -> None:
        """Forget everything (after a rebalance or a failed commit): the store is the truth."""
        self.changes = Changes()
        for clean in (self._trees, self._run_aggs, self._defs, self._anns):
            clean.clear()


def _take(d: dict[Any, Any], n: int) -> Iterable[Any]:
    it = iter(d)
    for _ in range(n):
        yield next(it)

