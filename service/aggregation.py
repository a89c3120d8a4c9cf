"""Pure aggregation math and the batch metric-tree update (DESIGN §4). No I/O.

A metric is a tree per data row: data row (level 0) → feature (level 1) → subclass (level 2).
A node's value aggregates the leaves reported *directly* at it if it has any, else its
children's values. Per model run we also keep, for every (metric, confidence key, level,
feature, subclass), the aggregate over the node values of all data rows: that is what the
query API serves in O(1).

Node values are recomputed from their tree's leaves when the tree changes (trees are small;
``math.fsum`` is correctly rounded). Run aggregates, whose members come and go in numbers,
keep Σx, Σln x and Σ1/x as *exact* fixed-point integers (units of 2⁻¹⁰⁷⁴, the smallest float
step): adding and later subtracting the same float is exact, so after millions of
replacements the sums equal a from-scratch ``math.fsum`` of the current members — float
drift and cancellation cannot creep in — and both kinds of value are the correctly rounded
result of what is there now.

Confidence-keyed values are split per confidence key: key ``""`` is the plain value, ``"0.5"``
the value at confidence 0.5; each key is an independent tree, so "explicit wins over roll-up"
and every aggregation apply per key.

The update (:func:`apply_batch`) works against :class:`StateAccess` (get/put of per-data-row
:class:`Tree` objects, run aggregates, metric definitions and the annotation index);
:class:`MemoryState` is the dict implementation used by unit tests, ``service.state`` provides
the cached, durable one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeAlias

from service.errors import RunstreamError
from service.events.constants import Aggregation

CM: TypeAlias = tuple[int, int, int, int]  # [TP, FP, TN, FN]
Value: TypeAlias = float | CM
LeafValue: TypeAlias = dict[str, Value]  # confidence key ("" = plain) → value

# (model run, metric, data row, level, feature, subclass, source); source "m" = metric row,
# "u:<uuid>" = a customMetric of the prediction with that annotation uuid.
LeafKey: TypeAlias = tuple[str, str, str, int, str, str, str]
# (model run, metric, confidence key, data row, level, feature, subclass)
NodeKey: TypeAlias = tuple[str, str, str, str, int, str, str]
# (model run, metric, confidence key, level, feature, subclass)
RunAggKey: TypeAlias = tuple[str, str, str, int, str, str]
# where a customMetric leaf of an annotation lives: (metric, data row, level, feature, subclass)
AnnotationLeaf: TypeAlias = tuple[str, str, int, str, str]
# one data row's tree of one metric: (model run, metric, data row)
TreeKey: TypeAlias = tuple[str, str, str]
LeafSub: TypeAlias = tuple[int, str, str, str]  # a leaf within its tree: (level, feature, subclass, source)
NodeSub: TypeAlias = tuple[str, int, str, str]  # a node within its tree: (confidence key, level, feature, subclass)

LEVEL_DATA_ROW, LEVEL_FEATURE, LEVEL_SUBCLASS = 0, 1, 2

_SCALE = 1074
_ONE = 1 << _SCALE


class AggregateError(RunstreamError):
    """A message cannot be applied to the aggregates; it goes to the DLQ as a whole."""

    error_class = "aggregate"


class AggregateConflictError(AggregateError):
    """A metric name arrived with an aggregation different from the one fixed for the run."""

    error_class = "aggregate.conflict"


class AggregateDomainError(AggregateError):
    """A value the aggregation is undefined for (negative under GM/HM, wrong value type)."""

    error_class = "aggregate.domain"


# --------------------------------------------------------------------------------------------
# exact fixed-point sums


def to_fixed(x: float) -> int:
    """``x`` as an exact integer count of 2⁻¹⁰⁷⁴ (every finite float is one)."""
    num, den = x.as_integer_ratio()
    return num << (_SCALE - (den.bit_length() - 1))


def from_fixed(v: int) -> float:
    """Correctly rounded float of an exact fixed-point sum (int/int division rounds once)."""
    try:
        return v / _ONE
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def encode_int(v: int) -> str:
    """Compact text for a fixed-point int: hex mantissa and a count of stripped zero bits."""
    if v == 0:
        return "0"
    tz = (v & -v).bit_length() - 1
    m = v >> tz
    return f"{m:x}p{tz}" if tz else f"{m:x}"


def decode_int(s: str) -> int:
    m, _, tz = s.partition("p")
    return int(m, 16) << int(tz) if tz else int(m, 16)


# --------------------------------------------------------------------------------------------
# aggregates

# What one member contributes to an aggregate: the exact fixed-point int of x / ln x / 1/x,
# the [TP, FP, TN, FN] tuple, or None for a zero under GM/HM (counted, not summed). Computed
# once per value and reused for every aggregate the value enters or leaves.
Term: TypeAlias = int | CM | None


def term(value: Value, aggregation: Aggregation) -> Term:
    if aggregation == "CONFUSION_MATRIX":
        assert isinstance(value, tuple)
        return value
    assert isinstance(value, float)
    if aggregation == "ARITHMETIC_MEAN" or aggregation == "SUM":
        num, den = value.as_integer_ratio()
        return num << (_SCALE - (den.bit_length() - 1))
    if value == 0.0:
        return None
    if aggregation == "GEOMETRIC_MEAN":
        return to_fixed(math.log(value))
    return to_fixed(1.0 / value)



@dataclass(slots=True)
class Agg:
    """Running aggregate over a multiset of values of one aggregation.

    Only the sums the aggregation needs are maintained (Σx for AM/SUM, Σln x for GM, Σ1/x
    for HM, element sums for confusion matrices), so an update costs one or two big-int adds.
    """

    n: int = 0
    zeros: int = 0
    s: int = 0  # exact Σx / Σln x / Σ1/x depending on the aggregation
    cm: tuple[int, int, int, int] = (0, 0, 0, 0)

    def add(self, value: Value, sign: int, aggregation: Aggregation) -> None:
        self.add_term(term(value, aggregation), sign)

    def add_term(self, t: Term, sign: int) -> None:
        """Add (sign 1) or remove (sign -1) one member given as its precomputed :func:`term`."""
        self.n += sign
        if t is None:
            self.zeros += sign
        elif type(t) is int:
            if sign > 0:
                self.s += t
            else:
                self.s -= t
        else:
            assert isinstance(t, tuple)
            a = self.cm
            self.cm = (a[0] + sign * t[0], a[1] + sign * t[1], a[2] + sign * t[2], a[3] + sign * t[3])

    def move(self, old: Term | Any, new: Term | Any) -> None:
        """Replace member ``old`` by ``new`` (either may be the absent marker): the hot path's
        single call per aggregate (a changed node value moves its run aggregate and parent)."""
        if type(old) is int and type(new) is int:
            self.s += new - old
            return
        if old is not _NO_TERM:
            self.add_term(old, -1)
        if new is not _NO_TERM:
            self.add_term(new, 1)

    def result(self, aggregation: Aggregation) -> Value | None:
        """The aggregate's value, or None when it has no members."""
        if self.n <= 0:
            return None
        if aggregation == "CONFUSION_MATRIX":
            return self.cm
        if aggregation == "ARITHMETIC_MEAN":
            return from_fixed(self.s) / self.n
        if aggregation == "SUM":
            return from_fixed(self.s)
        if self.zeros > 0:
            return 0.0
        if aggregation == "GEOMETRIC_MEAN":
            return math.exp(from_fixed(self.s) / self.n)
        return self.n / from_fixed(self.s)

    def encode(self) -> str:
        return f"{self.n},{self.zeros},{encode_int(self.s)},{self.cm[0]},{self.cm[1]},{self.cm[2]},{self.cm[3]}"

    @staticmethod
    def decode(text: str) -> Agg:
        n, z, s, a, b, c, d = text.split(",")
        return Agg(int(n), int(z), decode_int(s), (int(a), int(b), int(c), int(d)))


def aggregate(values: Iterable[Value], aggregation: Aggregation) -> Value | None:
    """From-scratch aggregate of ``values`` (used for slices, where rows are listed anyway)."""
    agg = Agg()
    for v in values:
        agg.add(v, 1, aggregation)
    return agg.result(aggregation)


def f1(cm: CM) -> float | None:
    """F1 = 2TP / (2TP + FP + FN), None only when that denominator is 0 (DESIGN §4.4)."""
    tp, fp, _tn, fn = cm
    d = 2 * tp + fp + fn
    return 2 * tp / d if d else None


def cm_ratios(cm: CM) -> dict[str, float | None]:
    """Precision, recall and F1 of [TP, FP, TN, FN]; None where the denominator is zero."""
    tp, fp, _tn, fn = cm
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    return {"precision": precision, "recall": recall, "f1": f1(cm)}


def numeric_value(value: Value) -> float | None:
    """The number a filter compares: the scalar itself, or F1 for a confusion matrix."""
    if isinstance(value, tuple):
        return f1(value)
    return value


# --------------------------------------------------------------------------------------------
# node values


def _fsum(values: Iterable[float]) -> float:
    """Correctly rounded sum (``math.fsum``); where that overflows, the exact sum rounded (±inf)."""
    vs = list(values)
    try:
        return math.fsum(vs)
    except OverflowError:
        return from_fixed(sum(to_fixed(v) for v in vs))


def _am(vs: list[Value]) -> Value:
    return vs[0] if len(vs) == 1 else _fsum(vs) / len(vs)  # type: ignore[arg-type]


def _sum(vs: list[Value]) -> Value:
    return vs[0] if len(vs) == 1 else _fsum(vs)  # type: ignore[arg-type]


def _gm(vs: list[Value]) -> Value:
    if 0.0 in vs:
        return 0.0
    return math.exp(_fsum(math.log(v) for v in vs) / len(vs))  # type: ignore[arg-type]


def _hm(vs: list[Value]) -> Value:
    if 0.0 in vs:
        return 0.0
    return len(vs) / _fsum(1.0 / v for v in vs)  # type: ignore[operator]


def _cm(vs: list[Value]) -> Value:
    if len(vs) == 1:
        return vs[0]
    a = b = c = d = 0
    for v in vs:
        assert isinstance(v, tuple)
        a += v[0]
        b += v[1]
        c += v[2]
        d += v[3]
    return (a, b, c, d)


# Why math.fsum for node values: it is correctly rounded, so it equals the exact fixed-point
# sum rounded once (what Agg computes) bit for bit, and a tree's few members need no running
# sums: a changed tree is recomputed from its leaves, which is cheaper than keeping objects.
_NODE_FN: dict[str, Callable[[list[Value]], Value]] = {
    "ARITHMETIC_MEAN": _am,
    "SUM": _sum,
    "GEOMETRIC_MEAN": _gm,
    "HARMONIC_MEAN": _hm,
    "CONFUSION_MATRIX": _cm,
}


def tree_values(leaves: Mapping[LeafSub, LeafValue], aggregation: Aggregation) -> dict[NodeSub, Value]:
    """Every node value of one tree from its leaves (DESIGN §4: explicit wins over roll-up)."""
    fn = _NODE_FN[aggregation]
    if len(leaves) == 1:  # the common tree: one leaf, its node and the ancestors roll it up alone
        for (lvl, f, s, _src), lv in leaves.items():
            if len(lv) == 1:
                for ck, v in lv.items():
                    x = fn([v])
                    if lvl == LEVEL_DATA_ROW:
                        return {(ck, lvl, f, s): x}
                    if lvl == LEVEL_FEATURE:
                        return {(ck, lvl, f, s): x, (ck, LEVEL_DATA_ROW, "", ""): fn([x])}
                    y = fn([x])
                    return {(ck, lvl, f, s): x, (ck, LEVEL_FEATURE, f, ""): y, (ck, LEVEL_DATA_ROW, "", ""): fn([y])}
    direct: dict[NodeSub, list[Value]] = {}
    deep = False
    for (lvl, f, s, _src), lv in leaves.items():
        if lvl:
            deep = True
        for ck, v in lv.items():
            k = (ck, lvl, f, s)
            members = direct.get(k)
            if members is None:
                direct[k] = [v]
            else:
                members.append(v)
    out = {k: fn(vs) for k, vs in direct.items()}
    if not deep:
        return out
    for level in (LEVEL_SUBCLASS, LEVEL_FEATURE):
        children: dict[NodeSub, list[Value]] = {}
        for (ck, lvl, f, _s), v in out.items():
            if lvl == level:
                pk = (ck, LEVEL_FEATURE, f, "") if level == LEVEL_SUBCLASS else (ck, LEVEL_DATA_ROW, "", "")
                if pk not in direct:
                    members = children.get(pk)
                    if members is None:
                        children[pk] = [v]
                    else:
                        members.append(v)
        for k, vs in children.items():
            out[k] = fn(vs)
    return out


# --------------------------------------------------------------------------------------------
# state access


@dataclass(slots=True)
class Tree:
    """Every leaf and node value of one (model run, metric, data row).

    Why trees: a leaf change touches its node and the node's ancestors, which are all in the
    same tree, so one lookup finds them and a store keeps one row per tree. Nodes hold only
    their values (:func:`tree_values` of the leaves); the exact running sums are kept where
    members come and go in numbers, the run aggregates.
    """

    leaves: dict[LeafSub, LeafValue] = field(default_factory=dict)
    nodes: dict[NodeSub, Value] = field(default_factory=dict)
    aggregation: Aggregation = "ARITHMETIC_MEAN"  # the metric's (set when the tree is created)


def tree_from_leaves(leaves: dict[LeafSub, LeafValue], aggregation: Aggregation) -> Tree:
    """A tree with its node values computed from ``leaves``."""
    return Tree(leaves, tree_values(leaves, aggregation), aggregation)


# a node whose value changed in a batch: (node, value before, value after; None = no value)
NodeMove: TypeAlias = tuple[NodeSub, Value | None, Value | None]


class StateAccess(Protocol):
    """What the batch update reads and writes; ``None`` as a put value deletes.

    ``put_tree`` is called after a tree was changed in place (an empty tree is a deletion),
    with the nodes whose value changed (a store keeps an index of node values).
    """

    def get_tree(self, key: TreeKey) -> Tree | None: ...
    def put_tree(self, key: TreeKey, tree: Tree, moves: list[NodeMove]) -> None: ...
    def get_run_agg(self, key: RunAggKey) -> Agg | None: ...
    def put_run_agg(self, key: RunAggKey, agg: Agg | None) -> None: ...
    def get_metric_def(self, run: str, metric: str) -> Aggregation | None: ...
    def put_metric_def(self, run: str, metric: str, aggregation: Aggregation) -> None: ...
    def get_annotation(self, run: str, uuid: str) -> tuple[AnnotationLeaf, ...] | None: ...
    def put_annotation(self, run: str, uuid: str, leaves: tuple[AnnotationLeaf, ...] | None) -> None: ...
    def touch_run(self, run: str) -> None: ...


class MemoryState:
    """Plain-dict :class:`StateAccess` (unit tests, and the shape the durable cache follows)."""

    def __init__(self) -> None:
        self.trees: dict[TreeKey, Tree] = {}
        self.run_aggs: dict[RunAggKey, Agg] = {}
        self.metric_defs: dict[tuple[str, str], Aggregation] = {}
        self.annotations: dict[tuple[str, str], tuple[AnnotationLeaf, ...]] = {}
        self.runs: set[str] = set()

    @property
    def leaves(self) -> dict[LeafKey, LeafValue]:
        """Every leaf by its flat key (a snapshot, for tests and comparisons)."""
        return {(r, m, dr, *sub): v for (r, m, dr), t in self.trees.items() for sub, v in t.leaves.items()}

    @property
    def nodes(self) -> dict[NodeKey, Value]:
        """Every node value by its flat key (a snapshot, for tests and comparisons)."""
        return {
            (r, m, ck, dr, lvl, f, s): v
            for (r, m, dr), t in self.trees.items()
            for (ck, lvl, f, s), v in t.nodes.items()
        }

    def get_tree(self, key: TreeKey) -> Tree | None:
        return self.trees.get(key)

    def put_tree(self, key: TreeKey, tree: Tree, moves: list[NodeMove]) -> None:
        if tree.leaves or tree.nodes:
            self.trees[key] = tree
        else:
            self.trees.pop(key, None)

    def get_run_agg(self, key: RunAggKey) -> Agg | None:
        return self.run_aggs.get(key)

    def put_run_agg(self, key: RunAggKey, agg: Agg | None) -> None:
        if agg is None:
            self.run_aggs.pop(key, None)
        else:
            self.run_aggs[key] = agg

    def get_metric_def(self, run: str, metric: str) -> Aggregation | None:
        return self.metric_defs.get((run, metric))

    def put_metric_def(self, run: str, metric: str, aggregation: Aggregation) -> None:
        self.metric_defs[(run, metric)] = aggregation

    def get_annotation(self, run: str, uuid: str) -> tuple[AnnotationLeaf, ...] | None:
        return self.annotations.get((run, uuid))

    def put_annotation(self, run: str, uuid: str, leaves: tuple[AnnotationLeaf, ...] | None) -> None:
        if leaves is None:
            self.annotations.pop((run, uuid), None)
        else:
            self.annotations[(run, uuid)] = leaves

    def touch_run(self, run: str) -> None:
        self.runs.add(run)


# --------------------------------------------------------------------------------------------
# message operations



class MetricLeaf(NamedTuple):
    """One leaf value to set: a metric row, or one customMetric of an annotation.

    A NamedTuple: immutable, and about half the cost of a frozen dataclass to build (one is made per
    metric row of every message).
    """

    metric: str
    aggregation: Aggregation
    data_row: str
    feature: str | None
    subclass: str | None
    value: LeafValue

    @property
    def level(self) -> int:
        if self.feature is None and self.subclass is None:
            return LEVEL_DATA_ROW
        return LEVEL_SUBCLASS if self.subclass is not None else LEVEL_FEATURE


@dataclass(frozen=True, slots=True)
class AnnotationUpdate:
    """A prediction row: replaces, as a whole, every earlier leaf of the same annotation uuid."""

    uuid: str
    leaves: tuple[MetricLeaf, ...]


@dataclass(slots=True)
class MessageOps:
    """Everything one Kafka message asks of the aggregates, applied all-or-nothing."""

    run: str
    metric_rows: list[MetricLeaf] = field(default_factory=list)
    annotations: list[AnnotationUpdate] = field(default_factory=list)


def normalize_value(value: object) -> LeafValue:
    """Metric value (scalar, [TP,FP,TN,FN], or confidence-keyed dict of those) → per-key dict."""
    if type(value) is tuple or type(value) is list or not isinstance(value, Mapping):  # ABC check last: slow
        return {"": _one_value(value)}
    return {confidence_key(k): _one_value(v) for k, v in value.items()}


def confidence_key(k: object) -> str:
    """Canonical text of a confidence key, so "0.50" and 0.5 are the same key."""
    return repr(float(k))  # type: ignore[arg-type]


def _one_value(v: object) -> Value:
    if isinstance(v, list | tuple):
        a, b, c, d = map(int, v)
        return (a, b, c, d)
    return float(v)  # type: ignore[arg-type]


def _check_leaf(
    leaf: MetricLeaf, pending: dict[str, Aggregation], get_def: Callable[[str, str], Aggregation | None], run: str
) -> None:
    metric, aggregation = leaf.metric, leaf.aggregation
    fixed = pending.get(metric) or get_def(run, metric)
    if fixed is not None and fixed != aggregation:
        raise AggregateConflictError(
            f"metric {metric!r} of model run {run!r} is aggregated with {fixed}; this message uses {aggregation}"
        )
    pending[metric] = aggregation
    if aggregation == "ARITHMETIC_MEAN" or aggregation == "SUM":
        for v in leaf.value.values():
            if type(v) is not float or v - v != 0.0:  # not a float, or inf/nan: say which below
                break
        else:
            return
    is_cm = aggregation == "CONFUSION_MATRIX"
    for ck, v in leaf.value.items():
        if isinstance(v, tuple) != is_cm:
            raise AggregateDomainError(f"{_where(metric, ck)}: value type does not match aggregation {aggregation}")
        if isinstance(v, float):
            if not math.isfinite(v):
                raise AggregateDomainError(f"{_where(metric, ck)}: value {v} is not finite")
            if aggregation in ("GEOMETRIC_MEAN", "HARMONIC_MEAN"):
                if v < 0:
                    raise AggregateDomainError(
                        f"{_where(metric, ck)}: negative value {v} is undefined under {aggregation}"
                    )
                if aggregation == "HARMONIC_MEAN" and v != 0 and math.isinf(1.0 / v):
                    raise AggregateDomainError(f"{_where(metric, ck)}: value {v} is too small for HARMONIC_MEAN")


def _where(metric: str, ck: str) -> str:
    return f"metric {metric!r}" + (f" at confidence {ck}" if ck else "")


def _level(f: str | None, s: str | None) -> int:
    if s is not None:
        return LEVEL_SUBCLASS
    return LEVEL_DATA_ROW if f is None else LEVEL_FEATURE


def validate_message(
    state: StateAccess, ops: MessageOps, known: Mapping[tuple[str, str], Aggregation] | None = None
) -> dict[str, Aggregation]:
    """Raise the message's first rejection before anything is changed; return its metric defs.

    ``known``: definitions fixed earlier in the same batch (not yet in ``state``).
    """
    pending: dict[str, Aggregation] = {}
    run = ops.run
    get_def = state.get_metric_def
    if known:

        def get_def(run: str, metric: str) -> Aggregation | None:
            return known.get((run, metric)) or state.get_metric_def(run, metric)

    for leaf in ops.metric_rows:
        _check_leaf(leaf, pending, get_def, run)
    for ann in ops.annotations:
        for leaf in ann.leaves:
            _check_leaf(leaf, pending, get_def, run)
    return pending


def apply_message(state: StateAccess, ops: MessageOps) -> None:
    """Validate, then apply one message; raises its AggregateError without changing anything."""
    rejected = apply_batch(state, [ops])
    if rejected:
        raise rejected[0][1]


def apply_batch(state: StateAccess, batch: Sequence[MessageOps]) -> list[tuple[int, AggregateError]]:
    """Apply messages in order, all-or-nothing each; return the rejected ones (index, error).

    Why per batch: the leaf writes of every accepted message are first collected per tree (a
    later write to the same leaf replaces an earlier one), then each changed tree is recomputed
    once and each node whose value changed moves its run aggregate once. The result equals
    applying the messages one by one: validation runs message by message, in order, against
    the definitions the earlier messages fixed.
    """
    rejected: list[tuple[int, AggregateError]] = []
    writes: dict[TreeKey, dict[LeafSub, LeafValue | None]] = {}
    tree_agg: dict[TreeKey, Aggregation] = {}
    new_defs: dict[tuple[str, str], Aggregation] = {}
    anns: dict[tuple[str, str], tuple[AnnotationLeaf, ...] | None] = {}
    runs: set[str] = set()
    get_def = state.get_metric_def
    for i, ops in enumerate(batch):
        run = ops.run
        try:
            defs = validate_message(state, ops, new_defs)
        except AggregateError as exc:
            rejected.append((i, exc))
            continue
        runs.add(run)
        for metric, aggregation in defs.items():
            if (run, metric) not in new_defs and get_def(run, metric) is None:
                new_defs[(run, metric)] = aggregation
        for leaf in ops.metric_rows:
            tk = (run, leaf.metric, leaf.data_row)
            f, s = leaf.feature, leaf.subclass
            w = writes.get(tk)
            if w is None:
                w = writes[tk] = {}
                tree_agg[tk] = leaf.aggregation
            w[(_level(f, s), f or "", s or "", "m")] = leaf.value
        for ann in ops.annotations:
            src = "u:" + ann.uuid
            akey = (run, ann.uuid)
            old = anns[akey] if akey in anns else state.get_annotation(run, ann.uuid)
            new: dict[AnnotationLeaf, LeafValue] = {}
            for leaf in ann.leaves:
                f, s = leaf.feature, leaf.subclass
                new[(leaf.metric, leaf.data_row, _level(f, s), f or "", s or "")] = leaf.value  # last wins
            for al in old or ():
                if al not in new:
                    metric, dr, level, f_, s_ = al
                    tk = (run, metric, dr)
                    w = writes.get(tk)
                    if w is None:
                        w = writes[tk] = {}
                        agg_ = new_defs.get((run, metric)) or get_def(run, metric)
                        assert agg_ is not None
                        tree_agg[tk] = agg_
                    w[(level, f_, s_, src)] = None
            for (metric, dr, level, f_, s_), value in new.items():
                tk = (run, metric, dr)
                w = writes.get(tk)
                if w is None:
                    w = writes[tk] = {}
                    tree_agg[tk] = defs[metric]
                w[(level, f_, s_, src)] = value
            anns[akey] = tuple(new) or None
    for run in runs:
        state.touch_run(run)
    for (run, metric), aggregation in new_defs.items():
        state.put_metric_def(run, metric, aggregation)
    deltas: dict[RunAggKey, Agg] = {}
    for tk, w in writes.items():
        _apply_tree(state, tk, tree_agg[tk], w, deltas)
    for rkey, d in deltas.items():
        ragg = state.get_run_agg(rkey)
        if ragg is None:
            ragg = d
        else:
            ragg.n += d.n
            ragg.zeros += d.zeros
            ragg.s += d.s
            a, c = ragg.cm, d.cm
            ragg.cm = (a[0] + c[0], a[1] + c[1], a[2] + c[2], a[3] + c[3])
        state.put_run_agg(rkey, ragg if ragg.n > 0 else None)
    for (run, uuid), index in anns.items():
        state.put_annotation(run, uuid, index)
    return rejected


def _apply_tree(
    state: StateAccess,
    tk: TreeKey,
    aggregation: Aggregation,
    w: dict[LeafSub, LeafValue | None],
    deltas: dict[RunAggKey, Agg],
) -> None:
    """Set a tree's collected leaf writes and recompute it; a changed node value moves its run
    aggregate, collected in ``deltas`` (one delta per run aggregate per batch)."""
    tree = state.get_tree(tk)
    if tree is None:
        tree = Tree({}, {}, aggregation)
    leaves = tree.leaves
    changed = False
    for sub, value in w.items():
        if value is None:
            if leaves.pop(sub, None) is not None:
                changed = True
        elif leaves.get(sub) != value:
            leaves[sub] = value
            changed = True
    if not changed:
        return
    aggregation = tree.aggregation
    old_nodes = tree.nodes
    new_nodes = tree.nodes = tree_values(leaves, aggregation)
    moves: list[NodeMove] = []
    run, metric, _dr = tk
    for nsub, now in new_nodes.items():
        was = old_nodes.pop(nsub, None)
        if was != now:
            moves.append((nsub, was, now))
    for nsub, gone in old_nodes.items():
        moves.append((nsub, gone, None))
    for nsub, oval, nval in moves:
        rkey: RunAggKey = (run, metric, nsub[0], nsub[1], nsub[2], nsub[3])
        d = deltas.get(rkey)
        if d is None:
            d = deltas[rkey] = Agg()
        if oval is not None:
            t = term(oval, aggregation)
            if type(t) is int:  # Agg.add_term, inlined (hot)
                d.n -= 1
                d.s -= t
            else:
                d.add_term(t, -1)
        if nval is not None:
            t = term(nval, aggregation)
            if type(t) is int:
                d.n += 1
                d.s += t
            else:
                d.add_term(t, 1)
    state.put_tree(tk, tree, moves)


_NO_TERM: Any = object()
