"""Pure aggregation math and the incremental metric-tree update (DESIGN §4). No I/O.

A metric is a tree per data row: data row (level 0) → feature (level 1) → subclass (level 2).
Each node holds two aggregates: one over the leaves reported *directly* at it and one over its
children's values; its value is the direct aggregate if it has any leaf, else the children's.
Per model run we also keep, for every (metric, confidence key, level, feature, subclass), the
aggregate over the node values of all data rows: that is what the query API serves in O(1).

Why exact sums: every aggregate keeps Σx, Σln x and Σ1/x as *exact* fixed-point integers
(units of 2⁻¹⁰⁷⁴, the smallest float step). Adding and later subtracting the same float is then
exact, so after millions of replacements the sums equal a from-scratch ``math.fsum`` of the
current members — float drift and cancellation cannot creep in — and the result is the
correctly rounded sum of what is there now.

Confidence-keyed values are split per confidence key: key ``""`` is the plain value, ``"0.5"``
the value at confidence 0.5; each key is an independent tree, so "explicit wins over roll-up"
and every aggregation apply per key.

The update works against :class:`StateAccess` (get/put of per-data-row :class:`Tree` objects,
run aggregates, metric definitions and the annotation index); :class:`MemoryState` is the dict implementation used by
unit tests, ``service.state_store`` provides the cached, durable one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, TypeAlias

from service.errors import RunstreamError

Aggregation = Literal["ARITHMETIC_MEAN", "GEOMETRIC_MEAN", "HARMONIC_MEAN", "SUM", "CONFUSION_MATRIX"]
AGGREGATIONS: tuple[Aggregation, ...] = (
    "ARITHMETIC_MEAN",
    "GEOMETRIC_MEAN",
    "HARMONIC_MEAN",
    "SUM",
    "CONFUSION_MATRIX",
)
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

    def copy(self) -> Agg:
        return Agg(self.n, self.zeros, self.s, self.cm)

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


def cm_ratios(cm: CM) -> dict[str, float | None]:
    """Precision, recall and F1 of [TP, FP, TN, FN]; None where the denominator is zero."""
    tp, fp, _tn, fn = cm
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None
    return {"precision": precision, "recall": recall, "f1": f1}


def numeric_value(value: Value) -> float | None:
    """The number a filter compares: the scalar itself, or F1 for a confusion matrix."""
    if isinstance(value, tuple):
        return cm_ratios(value)["f1"]
    return value


@dataclass(slots=True)
class NodeState:
    """One node of a data row's metric tree (one confidence key)."""

    direct: Agg = field(default_factory=Agg)
    children: Agg = field(default_factory=Agg)
    value: Value | None = None
    # the number the store indexes for this node (state_store), to write only changed values
    indexed: float | None = field(default=None, compare=False, repr=False)

    def compute(self, aggregation: Aggregation) -> Value | None:
        if self.direct.n > 0:
            return self.direct.result(aggregation)
        return self.children.result(aggregation)


# --------------------------------------------------------------------------------------------
# state access


@dataclass(slots=True)
class Tree:
    """Every leaf and node of one (model run, metric, data row).

    Why trees: a leaf change touches its node and the node's ancestors, which are all in the
    same tree, so the update finds them with one lookup and a store keeps one row per tree.
    """

    leaves: dict[LeafSub, LeafValue] = field(default_factory=dict)
    nodes: dict[NodeSub, NodeState] = field(default_factory=dict)
    aggregation: Aggregation = "ARITHMETIC_MEAN"  # the metric's (set when the tree is created)
    # how many of its nodes have a value row in the store's index (state_store), so a commit
    # notices nodes that left the tree; an int, not a copy of the values: memory per cached tree
    indexed: int = field(default=0, compare=False, repr=False)


def tree_from_leaves(leaves: dict[LeafSub, LeafValue], aggregation: Aggregation) -> Tree:
    """Rebuild every node of a tree from its leaves, bottom-up.

    Why this is exact: the sums are exact fixed-point integers, so a from-scratch build equals
    the incrementally maintained nodes bit for bit; a store therefore keeps only the leaves.
    """
    nodes: dict[NodeSub, NodeState] = {}
    for (lvl, f, s, _src), lv in leaves.items():
        for ck, v in lv.items():
            sub = (ck, lvl, f, s)
            node = nodes.get(sub)
            if node is None:
                node = nodes[sub] = NodeState()
            node.direct.add_term(term(v, aggregation), 1)
    for level in (LEVEL_SUBCLASS, LEVEL_FEATURE):
        for (ck, lvl, f, _s), node in [item for item in nodes.items() if item[0][1] == level]:
            value = node.value = node.compute(aggregation)
            if value is None:
                continue
            psub = (ck, LEVEL_FEATURE, f, "") if lvl == LEVEL_SUBCLASS else (ck, LEVEL_DATA_ROW, "", "")
            parent = nodes.get(psub)
            if parent is None:
                parent = nodes[psub] = NodeState()
            parent.children.add_term(term(value, aggregation), 1)
    for sub, node in nodes.items():
        if sub[1] == LEVEL_DATA_ROW:
            node.value = node.compute(aggregation)
    return Tree(leaves, nodes, aggregation)


class StateAccess(Protocol):
    """What the tree update reads and writes; ``None`` as a put value deletes.

    ``put_tree`` is called after a tree was changed in place (an empty tree is a deletion).
    """

    def get_tree(self, key: TreeKey) -> Tree | None: ...
    def put_tree(self, key: TreeKey, tree: Tree) -> None: ...
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
    def nodes(self) -> dict[NodeKey, NodeState]:
        """Every node by its flat key (a snapshot, for tests and comparisons)."""
        return {
            (r, m, ck, dr, lvl, f, s): n
            for (r, m, dr), t in self.trees.items()
            for (ck, lvl, f, s), n in t.nodes.items()
        }

    def get_tree(self, key: TreeKey) -> Tree | None:
        return self.trees.get(key)

    def put_tree(self, key: TreeKey, tree: Tree) -> None:
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

    A NamedTuple (immutable like the frozen dataclass it was, about half the cost to build:
    one is made per metric row of every message).
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
    if isinstance(value, Mapping):
        return {confidence_key(k): _one_value(v) for k, v in value.items()}
    return {"": _one_value(value)}


def confidence_key(k: object) -> str:
    """Canonical text of a confidence key, so "0.50" and 0.5 are the same key."""
    return repr(float(k))  # type: ignore[arg-type]


def _one_value(v: object) -> Value:
    if isinstance(v, list | tuple):
        a, b, c, d = (int(x) for x in v)
        return (a, b, c, d)
    return float(v)  # type: ignore[arg-type]


def _check_leaf(leaf: MetricLeaf, pending: dict[str, Aggregation], state: StateAccess, run: str) -> None:
    fixed = pending.get(leaf.metric) or state.get_metric_def(run, leaf.metric)
    if fixed is not None and fixed != leaf.aggregation:
        raise AggregateConflictError(
            f"metric {leaf.metric!r} of model run {run!r} is aggregated with {fixed}; "
            f"this message uses {leaf.aggregation}"
        )
    pending[leaf.metric] = leaf.aggregation
    is_cm = leaf.aggregation == "CONFUSION_MATRIX"
    for ck, v in leaf.value.items():
        where = f"metric {leaf.metric!r}" + (f" at confidence {ck}" if ck else "")
        if isinstance(v, tuple) != is_cm:
            raise AggregateDomainError(f"{where}: value type does not match aggregation {leaf.aggregation}")
        if isinstance(v, float):
            if not math.isfinite(v):
                raise AggregateDomainError(f"{where}: value {v} is not finite")
            if leaf.aggregation in ("GEOMETRIC_MEAN", "HARMONIC_MEAN"):
                if v < 0:
                    raise AggregateDomainError(f"{where}: negative value {v} is undefined under {leaf.aggregation}")
                if leaf.aggregation == "HARMONIC_MEAN" and v != 0 and math.isinf(1.0 / v):
                    raise AggregateDomainError(f"{where}: value {v} is too small for HARMONIC_MEAN")


def validate_message(state: StateAccess, ops: MessageOps) -> dict[str, Aggregation]:
    """Raise the message's first rejection before anything is changed; return new metric defs."""
    pending: dict[str, Aggregation] = {}
    for leaf in ops.metric_rows:
        _check_leaf(leaf, pending, state, ops.run)
    for ann in ops.annotations:
        for leaf in ann.leaves:
            _check_leaf(leaf, pending, state, ops.run)
    return pending


def apply_message(state: StateAccess, ops: MessageOps) -> None:
    """Validate, then apply every leaf change of one message with delta propagation.

    Raises AggregateConflictError / AggregateDomainError without changing anything.
    """
    defs = validate_message(state, ops)
    run = ops.run
    state.touch_run(run)
    for metric, aggregation in defs.items():
        if state.get_metric_def(run, metric) is None:
            state.put_metric_def(run, metric, aggregation)
    for leaf in ops.metric_rows:
        key: LeafKey = (
            run,
            leaf.metric,
            leaf.data_row,
            leaf.level,
            leaf.feature or "",
            leaf.subclass or "",
            "m",
        )
        set_leaf(state, key, leaf.aggregation, leaf.value)
    for ann in ops.annotations:
        _replace_annotation(state, run, ann)


def _replace_annotation(state: StateAccess, run: str, ann: AnnotationUpdate) -> None:
    src = "u:" + ann.uuid
    new: dict[LeafKey, tuple[Aggregation, LeafValue]] = {}
    for leaf in ann.leaves:
        key: LeafKey = (run, leaf.metric, leaf.data_row, leaf.level, leaf.feature or "", leaf.subclass or "", src)
        new[key] = (leaf.aggregation, leaf.value)  # same (uuid, name, node) twice: last wins
    old = state.get_annotation(run, ann.uuid) or ()
    for metric, dr, level, f, s in old:
        key = (run, metric, dr, level, f, s, src)
        if key not in new:
            aggregation = state.get_metric_def(run, metric)
            assert aggregation is not None
            set_leaf(state, key, aggregation, None)
    for key, (aggregation, value) in new.items():
        set_leaf(state, key, aggregation, value)
    index = tuple((k[1], k[2], k[3], k[4], k[5]) for k in new)
    state.put_annotation(run, ann.uuid, index or None)


def set_leaf(state: StateAccess, key: LeafKey, aggregation: Aggregation, new: LeafValue | None) -> None:
    """Set (or with None remove) one leaf and propagate the change of every affected node."""
    run, metric, dr, level, f, s, src = key
    tk = (run, metric, dr)
    tree = state.get_tree(tk)
    if tree is None:
        if new is None:
            return
        tree = Tree(aggregation=aggregation)
    sub = (level, f, s, src)
    leaves = tree.leaves
    old = leaves.get(sub)
    if old == new:
        return
    if new is None:
        del leaves[sub]
    else:
        leaves[sub] = new
    if old is None:
        assert new is not None
        cks: Iterable[str] = new.keys()
    elif new is None:
        cks = old.keys()
    else:
        cks = old.keys() | new.keys()
    nodes = tree.nodes
    for ck in cks:
        ov = old.get(ck) if old else None
        nv = new.get(ck) if new else None
        if ov == nv:
            continue
        node = nodes.get((ck, level, f, s)) or NodeState()
        if ov is not None:
            node.direct.add_term(term(ov, aggregation), -1)
        if nv is not None:
            node.direct.add_term(term(nv, aggregation), 1)
        _refresh(state, run, metric, nodes, (ck, level, f, s), node, aggregation)
    state.put_tree(tk, tree)


def _refresh(
    state: StateAccess,
    run: str,
    metric: str,
    nodes: dict[NodeSub, NodeState],
    sub: NodeSub,
    node: NodeState,
    aggregation: Aggregation,
) -> None:
    """Recompute a node's value; push old→new deltas to the run aggregate and the parent."""
    while True:
        old_value = node.value
        a = node.direct if node.direct.n > 0 else node.children  # NodeState.compute, inlined (hot)
        if a.n > 0:
            new_value = node.value = a.result(aggregation)
            nodes[sub] = node
        else:
            new_value = node.value = None
            nodes.pop(sub, None)
        if old_value == new_value:
            return
        ot = term(old_value, aggregation) if old_value is not None else _NO_TERM
        nt = term(new_value, aggregation) if new_value is not None else _NO_TERM
        ck, level, f, s = sub
        rkey: RunAggKey = (run, metric, ck, level, f, s)
        ragg = state.get_run_agg(rkey) or Agg()
        ragg.move(ot, nt)
        state.put_run_agg(rkey, ragg if ragg.n > 0 else None)
        if level == LEVEL_DATA_ROW:
            return
        sub = (ck, LEVEL_FEATURE, f, "") if level == LEVEL_SUBCLASS else (ck, LEVEL_DATA_ROW, "", "")
        parent = nodes.get(sub) or NodeState()
        parent.children.move(ot, nt)
        node = parent


_NO_TERM: Any = object()
