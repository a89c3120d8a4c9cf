"""The aggregator against a "floor": the same state work as the tightest plain Python + SQLite loop.

    .venv/bin/python bench/bench_agg_floor.py [--events 100000] [--rounds 3] [--quix] [--set-shards 2] [--json]
    .venv/bin/python bench/bench_agg_floor.py --cpu-phases [--events 40000] [--rounds 3]

Uses RUNSTREAM_KAFKA_BOOTSTRAP when set, else starts the dev broker (devstack.kafka_broker).

What it answers: how fast can Python and SQLite on this machine do the aggregator's state work at
all? If even the floor is below a target rate, no Python design of the engine reaches it here; if
it is well above, the gap is what the engine spends beyond the work itself.

1. Pre-produces the aggregator bench workload (bench_aggregator.produce, the topic bench_quix_peer.py
   uses) to a 6-partition topic.
2. Round by round, in rotating order: the raw aiokafka drain; the real Aggregator (SQLite, durable
   state, commit interval 1 s; bench_aggregator.aggregator_rate); the floor (below); the set-based
   floor (:class:`SetFloor`, below); with ``--quix`` also the Quix Streams peer
   (bench/quix_peer_app.py, needs ``.venv-quix``).
3. Verifies both floors' per-run aggregates against the aggregator's store (count and value, 1e-6
   relative, bench_quix_peer.compare) and that neither has one the other lacks.

``--cpu-phases`` needs no broker: on the same generated events, in interleaved rounds, it measures
the CPU per event of each phase of the engine (parse + leaf operations, prefetch, apply, encoding
the commit, the SQLite commit, eviction; CachedState over SqlStateBackend, batches of 10k applied
in chunks of 2,500 as the consumer does), of the floor (decode, apply, encode + SQLite write) and
of the set-based floor (decode + flatten, SQL apply, commit), all with the cyclic GC off, commits
once per batch.

The floor (:class:`Floor`), one loop in this process: ``getmany`` up to 10k records, decode each
value with msgspec straight into dicts, per metric row replace the leaf of its (run, metric, data
row) tree (a dict), recompute the tree's node values (explicit over roll-up, subclass → feature →
data row, each confidence key its own tree; math.fsum), move the per-run aggregate of every node
whose value changed (a list of float sums, as the Quix peer keeps); validate the metric's
aggregation against the run's (conflicts and non-finite values would be rejected). Every 1 s the
changed trees (leaves and node values, msgpack), the changed run aggregates and the next offsets
go to SQLite in one transaction (``executemany``; WAL, synchronous=NORMAL, 16 MiB page cache: the
store's settings), encoded in the loop and written in a thread, pipelined as the engine does; the
cyclic GC is off while it runs (the engine's BatchGc does the same per batch). On start it seeks
to the offsets stored there. What it leaves out, and the engine does: a bounded cache (the floor
keeps every tree in memory, so it never reads SQLite back), the node-value index rows behind the
query API's filters, exact fixed-point run sums, prediction events and their annotation index, the
DLQ, rebalance fencing.

The set-based floor (:class:`SetFloor`) does the same work with SQLite's engine doing the state
work: per poll batch, Python decodes and flattens the metric rows into one tuple of integer keys
per leaf value, one ``executemany`` loads them into a TEMP table, and ten statements replace
the leaves (last write in the batch wins), recompute the node values of the touched trees
(GROUP BY, explicit over roll-up via INSERT OR IGNORE) and move the per-run aggregates by new
minus old node values (kept in a node table). The SQL runs on a writer thread while the loop
decodes the next batch; state and offsets commit every 1 s. It leaves out what the floor leaves
out, and keeps its key dictionaries in memory. ``--set-shards N`` also runs it split over N SQLite
files and writer threads (partition p to shard p % N).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import gc
import json
import math
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import kafka_bootstrap, scratch_dir
from bench_aggregator import aggregator_rate, end_total, produce, raw_drain
from bench_quix_peer import QUIX_PYTHON, compare, quix_round

from service.kafka import create_topics

_DDL = """
CREATE TABLE IF NOT EXISTS trees (run TEXT, metric TEXT, data_row TEXT, body BLOB,
                                  PRIMARY KEY (run, metric, data_row)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS run_aggs (run TEXT, akey TEXT, body BLOB, PRIMARY KEY (run, akey)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (topic TEXT, part INTEGER, next INTEGER, PRIMARY KEY (topic, part));
"""

Where = tuple[int, str, str]  # (level, feature, subclass) of a leaf in its tree
Node = tuple[str, int, str, str]  # (confidence key, level, feature, subclass)


def _fsum_node(vs: list[Any], aggregation: str) -> Any:
    if len(vs) == 1:
        return vs[0]
    if aggregation == "ARITHMETIC_MEAN":
        return math.fsum(vs) / len(vs)
    if aggregation == "SUM":
        return math.fsum(vs)
    if aggregation == "CONFUSION_MATRIX":
        return (sum(v[0] for v in vs), sum(v[1] for v in vs), sum(v[2] for v in vs), sum(v[3] for v in vs))
    if 0.0 in vs:
        return 0.0
    if aggregation == "GEOMETRIC_MEAN":
        return math.exp(math.fsum([math.log(v) for v in vs]) / len(vs))
    return len(vs) / math.fsum([1.0 / v for v in vs])


def node_values(leaves: dict[Where, dict[str, Any]], aggregation: str) -> dict[Node, Any]:
    """Every node value of one tree (DESIGN §4: explicit values beat roll-ups)."""
    if len(leaves) == 1:
        for (lvl, f, s), lv in leaves.items():
            out: dict[Node, Any] = {}
            for ck, v in lv.items():
                out[(ck, lvl, f, s)] = v
                if lvl:
                    if lvl == 2:
                        out[(ck, 1, f, "")] = v
                    out[(ck, 0, "", "")] = v
            return out
    direct: dict[Node, list[Any]] = {}
    for (lvl, f, s), lv in leaves.items():
        for ck, v in lv.items():
            direct.setdefault((ck, lvl, f, s), []).append(v)
    out = {k: _fsum_node(vs, aggregation) for k, vs in direct.items()}
    for level in (2, 1):
        children: dict[Node, list[Any]] = {}
        for (ck, lvl, f, _s), v in out.items():
            if lvl == level:
                parent = (ck, 1, f, "") if level == 2 else (ck, 0, "", "")
                if parent not in direct:
                    children.setdefault(parent, []).append(v)
        for k, vs in children.items():
            out[k] = _fsum_node(vs, aggregation)
    return out


class Floor:
    """The aggregator's state work as one tight loop; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA cache_size=-16384")
        self.db.executescript(_DDL)
        self.trees: dict[tuple[str, str, str], list[Any]] = {}  # key -> [leaves, nodes, aggregation]
        self.aggs: dict[tuple[str, str, str, int, str, str], list[Any]] = {}  # [n, zeros, s, tp, fp, tn, fn]
        self.defs: dict[tuple[str, str], str] = {}
        self.dirty_trees: set[tuple[str, str, str]] = set()
        self.dirty_aggs: set[tuple[str, str, str, int, str, str]] = set()
        self.positions: dict[tuple[str, int], int] = {}
        self.stored: dict[tuple[str, int], int] = dict(
            ((t, p), o) for t, p, o in self.db.execute("SELECT topic, part, next FROM offsets")
        )
        self.rejected = 0
        self.phases = {"poll": 0.0, "decode+apply": 0.0, "commit encode": 0.0, "commit wait": 0.0,
                       "sqlite write (thread)": 0.0}
        self._pool = concurrent.futures.ThreadPoolExecutor(1)
        self._pending: concurrent.futures.Future[None] | None = None
        self._enc = msgspec.msgpack.Encoder()

    def apply(self, run: str, rows: list[dict[str, Any]]) -> None:
        trees, aggs, defs = self.trees, self.aggs, self.defs
        dirty_trees, dirty_aggs = self.dirty_trees, self.dirty_aggs
        # validate the whole message first (all-or-nothing), as the engine does
        parsed = []
        for row in rows:
            metric = row.get("metric_name") or row["metricName"]
            aggregation = row["aggregation"]
            fixed = defs.get((run, metric))
            if fixed is not None and fixed != aggregation:
                self.rejected += 1
                return
            ref = row.get("data_row") or row["dataRow"]
            dr = "id:" + ref["id"] if "id" in ref else "gk:" + (ref.get("globalKey") or ref["global_key"])
            raw = row["value"] if "value" in row else row["metricValue"]
            is_cm = aggregation == "CONFUSION_MATRIX"
            if type(raw) is dict:
                values: dict[str, Any] = {repr(float(k)): tuple(v) if is_cm else float(v) for k, v in raw.items()}
            else:
                values = {"": tuple(raw) if is_cm else float(raw)}
            if not is_cm:
                for v in values.values():
                    if v - v != 0.0 or (v < 0.0 and aggregation in ("GEOMETRIC_MEAN", "HARMONIC_MEAN")):
                        self.rejected += 1
                        return
            f = row.get("feature_name") or row.get("featureName")
            s = row.get("subclass_name") or row.get("subclassName")
            level = 0 if f is None else 2 if s is not None else 1
            parsed.append((metric, aggregation, dr, (level, f or "", s or ""), values))
        for metric, aggregation, dr, where, values in parsed:
            defs[(run, metric)] = aggregation
            tk = (run, metric, dr)
            tree = trees.get(tk)
            if tree is None:
                tree = trees[tk] = [{}, {}, aggregation]
            leaves = tree[0]
            if leaves.get(where) == values:
                continue
            leaves[where] = values
            old = tree[1]
            new = tree[1] = node_values(leaves, aggregation)
            dirty_trees.add(tk)
            for node in old.keys() | new.keys():
                ov, nv = old.get(node), new.get(node)
                if ov == nv:
                    continue
                ak = (run, metric, *node)
                a = aggs.get(ak)
                if a is None:
                    a = aggs[ak] = [0, 0, 0.0, 0, 0, 0, 0]
                dirty_aggs.add(ak)
                if ov is not None:
                    _move(a, ov, -1, aggregation)
                if nv is not None:
                    _move(a, nv, 1, aggregation)

    def commit(self, wait: bool = False) -> None:
        """Changed trees, changed run aggregates and the next offsets in one transaction.

        The rows are encoded here; the SQLite write runs in a thread (sqlite3 releases the GIL
        while it works) while the loop goes on, as the engine pipelines its commits. A commit
        first waits for the one before it.
        """
        t0 = time.perf_counter()
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        t1 = time.perf_counter()
        enc = self._enc.encode
        trees, aggs = self.trees, self.aggs
        tree_rows = []
        for tk in self.dirty_trees:
            leaves, nodes, _aggregation = trees[tk]
            tree_rows.append((*tk, enc([[[*w, lv] for w, lv in leaves.items()], [[*n, v] for n, v in nodes.items()]])))
        agg_rows = [(k[0], "|".join(map(str, k[1:])), enc(aggs[k])) for k in self.dirty_aggs]
        off_rows = [(t, p, o) for (t, p), o in self.positions.items() if self.stored.get((t, p)) != o]
        self.dirty_trees.clear()
        self.dirty_aggs.clear()
        self._pending = self._pool.submit(self._write, tree_rows, agg_rows, off_rows, dict(self.positions))
        t2 = time.perf_counter()
        self.phases["commit wait"] += t1 - t0
        self.phases["commit encode"] += t2 - t1
        if wait:
            self._pending.result()
            self._pending = None
            self.phases["commit wait"] += time.perf_counter() - t2

    def _write(self, tree_rows: list[Any], agg_rows: list[Any], off_rows: list[Any], positions: dict[Any, int]) -> None:
        t0 = time.perf_counter()
        db = self.db
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO trees VALUES (?, ?, ?, ?)", tree_rows)
        db.executemany("INSERT OR REPLACE INTO run_aggs VALUES (?, ?, ?)", agg_rows)
        db.executemany("INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)", off_rows)
        db.execute("COMMIT")
        self.stored.update(positions)
        self.phases["sqlite write (thread)"] += time.perf_counter() - t0

    def peer_aggs(self) -> dict[str, dict[str, list[Any]]]:
        """Per-run aggregates in the shape bench_quix_peer.compare reads."""
        out: dict[str, dict[str, list[Any]]] = {}
        for (run, metric, ck, lvl, f, s), a in self.aggs.items():
            out.setdefault(run, {})[f"{metric}|{ck}|{lvl}|{f}|{s}"] = a
        return out


def _move(a: list[Any], v: Any, sign: int, aggregation: str) -> None:
    a[0] += sign
    if aggregation == "ARITHMETIC_MEAN" or aggregation == "SUM":
        a[2] += sign * v
    elif aggregation == "CONFUSION_MATRIX":
        a[3] += sign * v[0]
        a[4] += sign * v[1]
        a[5] += sign * v[2]
        a[6] += sign * v[3]
    elif v == 0.0:
        a[1] += sign
    else:
        a[2] += sign * (math.log(v) if aggregation == "GEOMETRIC_MEAN" else 1.0 / v)


# --- the set-based floor -------------------------------------------------------------------------

_AGG_CODE = {"ARITHMETIC_MEAN": 0, "SUM": 1, "GEOMETRIC_MEAN": 2, "HARMONIC_MEAN": 3, "CONFUSION_MATRIX": 4}

# Keys are small integers: t a (run, metric, data row) tree, rm a (run, metric), w a (level, feature,
# subclass) position with pw its parent's, ck a confidence key; the dimension tables map them back.
# A tree's nodes are its leaves (e = 1, explicit) and the roll-ups (e = 0) computed from them.
_SET_DDL = """
CREATE TABLE IF NOT EXISTS dim_trees (t INTEGER PRIMARY KEY, rm INTEGER, dr TEXT);
CREATE TABLE IF NOT EXISTS dim_rm (rm INTEGER PRIMARY KEY, run TEXT, metric TEXT, agg INTEGER);
CREATE TABLE IF NOT EXISTS dim_where (w INTEGER PRIMARY KEY, lvl INTEGER, f TEXT, s TEXT);
CREATE TABLE IF NOT EXISTS dim_ck (ck INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE IF NOT EXISTS nodes (t INTEGER, w INTEGER, ck INTEGER, e INTEGER, rm INTEGER, lvl INTEGER,
    pw INTEGER, agg INTEGER, v REAL, z INTEGER, x REAL, tp INTEGER, fp INTEGER, tn INTEGER, fn INTEGER,
    PRIMARY KEY (t, w, ck)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS run_aggs (rm INTEGER, ck INTEGER, w INTEGER, n INTEGER, zeros INTEGER, sm REAL,
    tp INTEGER, fp INTEGER, tn INTEGER, fn INTEGER, PRIMARY KEY (rm, ck, w)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (topic TEXT, part INTEGER, next INTEGER, PRIMARY KEY (topic, part));
CREATE TEMP TABLE batch (seq INTEGER, t INTEGER, w INTEGER, ck INTEGER, rm INTEGER, lvl INTEGER, pw INTEGER,
    agg INTEGER, v REAL, tp INTEGER, fp INTEGER, tn INTEGER, fn INTEGER);
CREATE TEMP TABLE touched (t INTEGER PRIMARY KEY);
"""

# A node's value from its children, as _fsum_node computes it (agg is constant within a tree), from
# the children's terms (z: is zero, x: ln v for GM, 1/v for HM). One child is its own value; a zero
# child makes GM and HM zero.
_NODE_VALUE = """CASE WHEN count(*) = 1 THEN min(v) WHEN agg = 0 THEN sum(v) / count(*) WHEN agg = 1 THEN sum(v)
    WHEN agg = 4 THEN 0.0 WHEN max(z) THEN 0.0 WHEN agg = 2 THEN exp(sum(x) / count(*)) ELSE count(*) / sum(x) END"""


# A node's terms in its per-run aggregate, as _move adds them: z its zero count, x its float sum term.
# Computed once per node and kept beside its value, so moving an aggregate only adds columns.
_ZX = """agg IN (2, 3) AND v = 0,
    CASE WHEN agg <= 1 THEN v WHEN agg = 4 OR v = 0 THEN 0.0 WHEN agg = 2 THEN ln(v) ELSE 1.0 / v END"""


# Per-run aggregates move by a node's terms: out with its old value, in with its new one (a node in
# both moves n by 0). One upsert per node row beats sorting them for a GROUP BY: the run aggregates
# are few and cached.
_MOVE = """
        ON CONFLICT (rm, ck, w) DO UPDATE SET n = n + excluded.n, zeros = zeros + excluded.zeros,
          sm = sm + excluded.sm, tp = tp + excluded.tp, fp = fp + excluded.fp, tn = tn + excluded.tn,
          fn = fn + excluded.fn"""

_SET_APPLY = [
    "DELETE FROM touched",
    "INSERT OR IGNORE INTO touched SELECT t FROM batch",
    # the touched trees' nodes leave their run aggregates (CROSS: the touched trees drive the join)
    "INSERT INTO run_aggs SELECT rm, ck, w, -1, -z, -x, -tp, -fp, -tn, -fn"
    " FROM touched CROSS JOIN nodes USING (t) WHERE true" + _MOVE,
    # replace semantics: the roll-ups go, and each written leaf loses every confidence key it had;
    # the last write of a leaf in the batch wins
    "DELETE FROM nodes WHERE t IN (SELECT t FROM touched) AND e = 0",
    "DELETE FROM nodes WHERE (t, w) IN (SELECT t, w FROM batch)",
    f"INSERT INTO nodes SELECT t, w, ck, 1, rm, lvl, pw, agg, v, {_ZX}, tp, fp, tn, fn FROM batch"
    " WHERE seq IN (SELECT max(seq) FROM batch GROUP BY t, w)",
    # roll-ups where no explicit node exists (INSERT OR IGNORE): subclass -> feature -> data row
    f"INSERT OR IGNORE INTO nodes SELECT t, w, ck, 0, rm, 1, 0, agg, v, {_ZX}, tp, fp, tn, fn FROM ("
    f" SELECT t, ck, pw AS w, rm, agg, {_NODE_VALUE} AS v, sum(tp) AS tp, sum(fp) AS fp, sum(tn) AS tn,"
    " sum(fn) AS fn FROM touched CROSS JOIN nodes USING (t) WHERE lvl = 2 GROUP BY t, ck, pw)",
    f"INSERT OR IGNORE INTO nodes SELECT t, 0, ck, 0, rm, 0, 0, agg, v, {_ZX}, tp, fp, tn, fn FROM ("
    f" SELECT t, ck, rm, agg, {_NODE_VALUE} AS v, sum(tp) AS tp, sum(fp) AS fp, sum(tn) AS tn,"
    " sum(fn) AS fn FROM touched CROSS JOIN nodes USING (t) WHERE lvl = 1 GROUP BY t, ck)",
    # the touched trees' nodes enter their run aggregates with their new values
    "INSERT INTO run_aggs SELECT rm, ck, w, 1, z, x, tp, fp, tn, fn FROM touched CROSS JOIN nodes USING (t)"
    " WHERE true" + _MOVE,
    "DELETE FROM batch",
]


class _Row(msgspec.Struct):
    """One metric row; the contract accepts snake_case and camelCase names."""

    aggregation: str
    metric_name: str | None = None
    metricName: str | None = None
    data_row: dict[str, str] | None = None
    dataRow: dict[str, str] | None = None
    value: Any = None
    metricValue: Any = None
    feature_name: str | None = None
    featureName: str | None = None
    subclass_name: str | None = None
    subclassName: str | None = None


class _Event(msgspec.Struct):
    model_run_id: str
    metrics: list[_Row]


class SetFloor:
    """The aggregator's state work set-based: Python flattens, SQLite's engine does the state work.

    Per poll batch: msgspec decodes each message into structs and Python flattens its metric rows
    into one tuple of integer keys per leaf value (validating the message all-or-nothing, as the
    engine does); one ``executemany`` puts the batch's tuples into a TEMP table, and the statements
    of ``_SET_APPLY`` replace the leaves, recompute the node values of the touched trees only and
    move the per-run aggregates by new minus old node values. All SQL runs on one writer thread
    (sqlite3 releases the GIL), so the loop decodes the next batch meanwhile; state, new dimension
    rows and offsets commit in one transaction every 1 s. The per-run aggregates are float sums
    (SQLite's SUM, not fsum). The key dictionaries (tree, (run, metric), position, confidence key
    -> integer) stay in memory, one entry per tree: the bounded cache the engine keeps is not here.
    """

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA cache_size=-16384")
        self.db.execute("PRAGMA temp_store=MEMORY")
        self.db.executescript(_SET_DDL)
        db = self.db
        self.stored: dict[tuple[str, int], int] = {(t, p): o for t, p, o in db.execute("SELECT * FROM offsets")}
        self.rms: dict[tuple[str, str], tuple[int, str, int]] = {
            (run, metric): (rm, next(a for a, c in _AGG_CODE.items() if c == agg), agg)
            for rm, run, metric, agg in db.execute("SELECT * FROM dim_rm")
        }
        self.trees: dict[tuple[int, str], int] = {(rm, dr): t for t, rm, dr in db.execute("SELECT * FROM dim_trees")}
        self.wheres: dict[tuple[int, str, str], tuple[int, int]] = {(0, "", ""): (0, 0)}
        for w, lvl, f, s in db.execute("SELECT * FROM dim_where"):
            self.wheres[(lvl, f, s)] = (w, 0)
        for (lvl, f, _s), (w, _pw) in list(self.wheres.items()):
            if lvl == 2:
                self.wheres[(lvl, f, _s)] = (w, self.wheres[(1, f, "")][0])
        self.cks: dict[str, int] = {name: ck for ck, name in db.execute("SELECT * FROM dim_ck")}
        self.new_dims: dict[str, list[tuple[Any, ...]]] = {"dim_trees": [], "dim_rm": [], "dim_where": [],
                                                           "dim_ck": []}
        self.positions: dict[tuple[str, int], int] = {}
        self.rejected = 0
        self.seq = 0
        self.phases = {"poll": 0.0, "decode": 0.0, "wait for the writer": 0.0,
                       "sql apply (thread)": 0.0, "commit (thread)": 0.0}
        self._pool = concurrent.futures.ThreadPoolExecutor(1)
        self._pending: concurrent.futures.Future[None] | None = None
        self._decode = msgspec.json.Decoder(_Event).decode
        db.execute("BEGIN")

    def _where(self, key: tuple[int, str, str]) -> tuple[int, int]:
        lvl, f, _s = key
        pw = 0 if lvl < 2 else (self.wheres.get((1, f, "")) or self._where((1, f, "")))[0]
        w = self.wheres[key] = (len(self.wheres), pw)
        self.new_dims["dim_where"].append((w[0], *key))
        return w

    def flatten(self, values: list[bytes]) -> list[tuple[Any, ...]]:
        """One tuple per leaf value of the messages' metric rows; an invalid message adds none."""
        out: list[tuple[Any, ...]] = []
        decode, rms, trees, wheres, cks, codes = self._decode, self.rms, self.trees, self.wheres, self.cks, _AGG_CODE
        new = self.new_dims
        seq = self.seq
        for raw_msg in values:
            ev = decode(raw_msg)
            run = ev.model_run_id
            msg: list[tuple[Any, ...]] = []
            ok = True
            rm_mark = len(new["dim_rm"])  # a rejected message must not fix the aggregation of a metric it named
            for row in ev.metrics:
                metric = row.metric_name or row.metricName
                aggregation = row.aggregation
                code = codes.get(aggregation)
                if metric is None or code is None:
                    ok = False
                    break
                rmv = rms.get((run, metric))
                if rmv is None:
                    rmv = rms[(run, metric)] = (len(rms), aggregation, code)
                    new["dim_rm"].append((rmv[0], run, metric, code))
                elif rmv[1] != aggregation:
                    ok = False
                    break
                rm = rmv[0]
                ref = row.data_row or row.dataRow or {}
                dr = "id:" + ref["id"] if "id" in ref else "gk:" + (ref.get("globalKey") or ref["global_key"])
                t = trees.get((rm, dr))
                if t is None:
                    t = trees[(rm, dr)] = len(trees)
                    new["dim_trees"].append((t, rm, dr))
                raw = row.value if row.value is not None else row.metricValue
                f = row.feature_name or row.featureName
                s = row.subclass_name or row.subclassName
                level = 0 if f is None else 2 if s is not None else 1
                wkey = (level, f or "", s or "")
                w, pw = wheres.get(wkey) or self._where(wkey)
                seq += 1
                pairs = [(repr(float(k)), v) for k, v in raw.items()] if type(raw) is dict else [("", raw)]
                for name, v in pairs:
                    ck = cks.get(name)
                    if ck is None:
                        ck = cks[name] = len(cks)
                        new["dim_ck"].append((ck, name))
                    if code == 4:
                        msg.append((seq, t, w, ck, rm, level, pw, 4, 0.0, *v))
                        continue
                    v = float(v)
                    if v - v != 0.0 or (v < 0.0 and code >= 2):
                        ok = False
                        break
                    msg.append((seq, t, w, ck, rm, level, pw, code, v, 0, 0, 0, 0))
                if not ok:
                    break
            if ok:
                out += msg
            else:
                # a rejected message leaves at most unused tree and key entries behind (no state); the
                # metrics it introduced are forgotten, so a later message may fix their aggregation
                for _id, r, m, _code in new["dim_rm"][rm_mark:]:
                    del rms[(r, m)]
                del new["dim_rm"][rm_mark:]
                self.rejected += 1
        self.seq = seq
        return out

    def apply_sql(self, rows: list[tuple[Any, ...]]) -> None:
        t0 = time.perf_counter()
        db = self.db
        db.executemany("INSERT INTO batch VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        for stmt in _SET_APPLY:
            db.execute(stmt)
        self.phases["sql apply (thread)"] += time.perf_counter() - t0

    def take_dims(self) -> dict[str, list[tuple[Any, ...]]]:
        new, self.new_dims = self.new_dims, {k: [] for k in self.new_dims}
        return new

    def commit_sql(self, job: tuple[dict[str, list[tuple[Any, ...]]], dict[tuple[str, int], int]]) -> None:
        t0 = time.perf_counter()
        dims, positions = job
        db = self.db
        for table, rows in dims.items():
            if rows:
                db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
        db.executemany("INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)",
                       [(t, p, o) for (t, p), o in positions.items() if self.stored.get((t, p)) != o])
        db.execute("COMMIT")
        db.execute("BEGIN")
        self.stored.update(positions)
        self.phases["commit (thread)"] += time.perf_counter() - t0

    def _submit(self, fn: Any, arg: Any) -> None:
        t0 = time.perf_counter()
        if self._pending is not None:
            self._pending.result()
        self.phases["wait for the writer"] += time.perf_counter() - t0
        self._pending = self._pool.submit(fn, arg)

    def apply(self, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            self._submit(self.apply_sql, rows)

    def commit(self, wait: bool = False) -> None:
        self._submit(self.commit_sql, (self.take_dims(), dict(self.positions)))
        if wait:
            self._submit(lambda _: None, None)

    def close(self) -> None:
        if self._pending is not None:
            self._pending.result()
        self._pool.shutdown()
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
        self.db.close()

    @staticmethod
    def peer_aggs(path: Path) -> dict[str, dict[str, list[Any]]]:
        """Per-run aggregates from the committed store, in the shape bench_quix_peer.compare reads."""
        out: dict[str, dict[str, list[Any]]] = {}
        db = sqlite3.connect(path)
        try:
            for run, metric, name, lvl, f, s, *a in db.execute(
                "SELECT r.run, r.metric, c.name, w.lvl, w.f, w.s, n, zeros, sm, tp, fp, tn, fn FROM run_aggs a"
                " JOIN dim_rm r USING (rm) JOIN dim_ck c USING (ck)"
                " JOIN (SELECT * FROM dim_where UNION ALL SELECT 0, 0, '', '') w USING (w)"
            ):
                out.setdefault(run, {})[f"{metric}|{name}|{lvl}|{f}|{s}"] = a
        finally:
            db.close()
        return out


async def _consume(
    bootstrap: str,
    ends: dict[TopicPartition, int],
    stored: Callable[[tuple[str, int]], int | None],
    step: Callable[[dict[TopicPartition, list[Any]]], None],
    positions: Callable[[], dict[tuple[str, int], int]],
    commit: Callable[[bool], None],
    phases: dict[str, float],
) -> float:
    """Drive a floor over the topic as the aggregator runs: seek every partition to the floor's stored
    offset, hand each poll (up to 10k records) to ``step``, ``commit(False)`` every 1 s and ``commit(True)``
    (durable) once the positions reach the topic's end. Seconds from the first batch to that commit."""
    tps = [tp for tp, end in ends.items() if end]
    want = {(tp.topic, tp.partition): ends[tp] for tp in tps}
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    gc_was = gc.isenabled()
    gc.disable()  # the engine's BatchGc keeps the collector off while it applies, too
    try:
        c.assign(tps)
        for tp in tps:  # exactly-once: resume where the store's offsets say
            offset = stored((tp.topic, tp.partition))
            if offset is None:
                await c.seek_to_beginning(tp)
            else:
                c.seek(tp, offset)
        t0 = 0.0
        last_commit = 0.0
        while True:
            t_poll = time.perf_counter()
            batch = await c.getmany(timeout_ms=100, max_records=10_000)
            now = time.perf_counter()
            if batch and not t0:
                t0 = last_commit = now
            elif t0:
                phases["poll"] += now - t_poll
            step(batch)
            now = time.perf_counter()
            at = positions()
            if all(at.get(k, 0) >= v for k, v in want.items()):
                commit(True)
                return time.perf_counter() - t0
            if now - last_commit >= 1.0:
                commit(False)
                last_commit = now
    finally:
        if gc_was:
            gc.enable()
        await c.stop()


async def set_floor_rate(
    bootstrap: str, topic: str, ends: dict[TopicPartition, int], path: Path, shards: int = 1
) -> tuple[float, list[SetFloor]]:
    """Run the set-based floor over the topic; clock from its first batch until the topic end is durable.

    With ``shards`` > 1, partition p goes to shard p % shards: its own SQLite file, writer thread and
    stored offsets (as replicas splitting the partitions would), fed by the one loop. The topic is
    keyed by model run, so every tree and per-run aggregate lives in one shard.
    """
    floors = [SetFloor(path.with_name(f"{path.stem}-{i}{path.suffix}") if shards > 1 else path)
              for i in range(shards)]
    phases = floors[0].phases

    def step(batch: dict[TopicPartition, list[Any]]) -> None:
        for i, floor in enumerate(floors):
            mine = [(tp, recs) for tp, recs in batch.items() if tp.partition % shards == i]
            if not mine:
                continue
            t = time.perf_counter()
            rows = floor.flatten([rec.value for _tp, recs in mine for rec in recs])
            for tp, recs in mine:
                floor.positions[(tp.topic, tp.partition)] = recs[-1].offset + 1
            phases["decode"] += time.perf_counter() - t
            floor.apply(rows)

    def positions() -> dict[tuple[str, int], int]:
        return {k: v for floor in floors for k, v in floor.positions.items()}

    def commit(wait: bool) -> None:
        for floor in floors:
            floor.commit()
        if wait:
            for floor in floors:
                floor.commit(wait=True)

    try:
        elapsed = await _consume(
            bootstrap, ends, lambda k: floors[k[1] % shards].stored.get(k), step, positions, commit, phases
        )
    finally:
        for floor in floors:
            floor.close()
    for floor in floors[1:]:  # one set of phases: the writer threads' seconds add up
        for k, v in floor.phases.items():
            phases[k] += v
    return sum(ends.values()) / elapsed, floors


def set_floor_aggs(paths: list[Path]) -> dict[str, dict[str, list[Any]]]:
    """The shards' per-run aggregates, summed where two shards hold the same one."""
    out: dict[str, dict[str, list[Any]]] = {}
    for path in paths:
        for run, aggs in SetFloor.peer_aggs(path).items():
            mine = out.setdefault(run, {})
            for k, a in aggs.items():
                mine[k] = [x + y for x, y in zip(mine[k], a, strict=True)] if k in mine else a
    return out


async def floor_rate(bootstrap: str, topic: str, ends: dict[TopicPartition, int], path: Path) -> tuple[float, Floor]:
    """Run the floor over the topic; clock from its first batch until the topic end is durable."""
    floor = Floor(path)
    decode = msgspec.json.Decoder().decode
    apply = floor.apply
    positions = floor.positions

    def step(batch: dict[TopicPartition, list[Any]]) -> None:
        t = time.perf_counter()
        for tp, recs in batch.items():
            for rec in recs:
                ev = decode(rec.value)
                apply(ev["model_run_id"], ev["metrics"])
            positions[(tp.topic, tp.partition)] = recs[-1].offset + 1
        floor.phases["decode+apply"] += time.perf_counter() - t

    try:
        elapsed = await _consume(
            bootstrap, ends, floor.stored.get, step, lambda: positions, floor.commit, floor.phases
        )
    finally:
        floor._pool.shutdown()
        floor.db.close()
    return sum(ends.values()) / elapsed, floor


def cpu_phases(n: int, rounds: int) -> dict[str, Any]:
    """CPU µs per event of each phase, engine and floor, same events, medians of interleaved rounds."""
    import random

    from bench_aggregator import bench_event

    from consumers.aggregator import ops_from_event
    from service.aggregation import apply_batch
    from service.events import parse_event
    from service.state import CachedState, SqlStateBackend

    rng = random.Random(42)
    values = [bench_event(rng, i)[1] for i in range(n)]
    tmp = scratch_dir("bench-floor-cpu-")

    def engine(r: int) -> dict[str, float]:
        backend = SqlStateBackend.sqlite(tmp / f"engine{r}.sqlite3")
        state = CachedState(backend, max_clean=50_000)  # the Aggregator's default
        ph = dict.fromkeys(("parse+ops", "prefetch", "apply", "encode", "commit", "evict"), 0.0)
        pos = 0
        clock = time.process_time
        for b in range(0, n, 10_000):
            t = clock()
            ops = [ops_from_event(parse_event("metric", v, max_bytes=1 << 20)) for v in values[b : b + 10_000]]  # type: ignore[arg-type]
            ph["parse+ops"] += clock() - t
            t = clock()
            state.prefetch(ops)
            ph["prefetch"] += clock() - t
            t = clock()
            for c in range(0, len(ops), 2500):
                apply_batch(state, ops[c : c + 2500])
            ph["apply"] += clock() - t
            t = clock()
            enc = state.take_changes().encode()
            ph["encode"] += clock() - t
            t = clock()
            backend.commit("g", enc, {("t", 0): pos + len(ops)}, {("t", 0): pos or None})
            pos += len(ops)
            ph["commit"] += clock() - t
            t = clock()
            state.committed()
            ph["evict"] += clock() - t
        backend.close()
        return {k: v / n * 1e6 for k, v in ph.items()}

    def floor(r: int) -> dict[str, float]:
        fl = Floor(tmp / f"floor{r}.sqlite3")
        decode = msgspec.json.Decoder().decode
        ph = dict.fromkeys(("decode", "apply", "encode+write"), 0.0)
        clock = time.process_time
        for b in range(0, n, 10_000):
            t = clock()
            events = [decode(v) for v in values[b : b + 10_000]]
            ph["decode"] += clock() - t
            t = clock()
            for ev in events:
                fl.apply(ev["model_run_id"], ev["metrics"])
            ph["apply"] += clock() - t
            t = clock()
            fl.positions[("t", 0)] = b + len(events)
            fl.commit(wait=True)  # process_time counts the writer thread too
            ph["encode+write"] += clock() - t
        fl._pool.shutdown()
        fl.db.close()
        return {k: v / n * 1e6 for k, v in ph.items()}

    def set_floor(r: int) -> dict[str, float]:
        sf = SetFloor(tmp / f"setfloor{r}.sqlite3")
        ph = dict.fromkeys(("decode", "sql apply", "commit"), 0.0)
        clock = time.process_time
        for b in range(0, n, 10_000):
            t = clock()
            rows = sf.flatten(values[b : b + 10_000])
            ph["decode"] += clock() - t
            t = clock()
            sf.apply_sql(rows)
            ph["sql apply"] += clock() - t
            t = clock()
            sf.positions[("t", 0)] = b + 10_000
            sf.commit_sql((sf.take_dims(), dict(sf.positions)))
            ph["commit"] += clock() - t
        sf.close()
        return {k: v / n * 1e6 for k, v in ph.items()}

    cases = {"engine": engine, "floor": floor, "setfloor": set_floor}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            names = list(cases)
            for name in names[r % 3 :] + names[: r % 3]:
                runs[name].append(cases[name](r))
                gc.collect()
    finally:
        if gc_was:
            gc.enable()
    out: dict[str, Any] = {"events": n, "rounds": rounds}
    for name, rs in runs.items():
        med = {k: statistics.median(x[k] for x in rs) for k in rs[0]}
        med["total"] = statistics.median(sum(x.values()) for x in rs)
        out[name] = med
        print(f"{name} CPU us/event: " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()), flush=True)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quix", action="store_true", help="also run the Quix Streams peer each round")
    ap.add_argument("--json", action="store_true", help="print one JSON object with every figure as the last line")
    ap.add_argument("--set-shards", type=int, default=0,
                    help="also run the set-based floor split over this many SQLite files and writer threads")
    ap.add_argument("--cpu-phases", action="store_true", help="CPU per phase, engine vs floor, no broker")
    args = ap.parse_args()
    if args.cpu_phases:
        res = cpu_phases(args.events, args.rounds)
        if args.json:
            print(json.dumps(res))
        return
    if args.quix and not QUIX_PYTHON.exists():
        raise SystemExit(f"{QUIX_PYTHON} is missing (make bench creates it)")
    from service.gc_tuning import tune_gc

    tune_gc()  # what runstream run does before starting the consumers
    tmp = scratch_dir("bench-floor-")
    broker = contextlib.ExitStack()
    bootstrap = broker.enter_context(kafka_bootstrap(tmp / "kafka"))
    try:
        topic = f"bench-floor-{int(time.time())}"
        await create_topics(bootstrap, [topic], partitions=6)
        await produce(bootstrap, topic, args.events)
        ends = await end_total(bootstrap, topic)
        total = sum(ends.values())
        sharded = ["setfloor_shards"] if args.set_shards > 1 else []
        cases = ["drain", "aggregator", "floor", "setfloor", *sharded] + (["quix"] if args.quix else [])
        rates: dict[str, list[float]] = {c: [] for c in cases}
        # process CPU per event
        cpu_us: dict[str, list[float]] = {c: [] for c in ("aggregator", "floor", "setfloor", *sharded)}
        problems: list[str] = []
        floor_phases: list[dict[str, float]] = []
        set_phases: dict[str, list[dict[str, float]]] = {c: [] for c in ("setfloor", *sharded)}
        for r in range(args.rounds):
            rdir = tmp / f"round{r}"
            rdir.mkdir()
            order = cases[r % len(cases):] + cases[: r % len(cases)]
            floor: Floor | None = None
            set_floors: dict[str, list[SetFloor]] = {}
            for case in order:
                if case == "drain":
                    rates[case].append(await raw_drain(bootstrap, topic, total))
                elif case == "aggregator":
                    cpu0 = time.process_time()
                    rate, _extra = await aggregator_rate(bootstrap, topic, ends, rdir)
                    cpu_us[case].append((time.process_time() - cpu0) / total * 1e6)
                    rates[case].append(rate)
                elif case == "floor":
                    cpu0 = time.process_time()
                    rate, floor = await floor_rate(bootstrap, topic, ends, rdir / "floor.sqlite3")
                    cpu_us[case].append((time.process_time() - cpu0) / total * 1e6)
                    rates[case].append(rate)
                elif case.startswith("setfloor"):
                    cpu0 = time.process_time()
                    shards = args.set_shards if case == "setfloor_shards" else 1
                    rate, set_floors[case] = await set_floor_rate(
                        bootstrap, topic, ends, rdir / f"{case}.sqlite3", shards
                    )
                    cpu_us[case].append((time.process_time() - cpu0) / total * 1e6)
                    rates[case].append(rate)
                else:
                    peer = await quix_round(bootstrap, topic, total, rdir)
                    rates[case].append(peer["rate"])
                cpu = f", CPU {cpu_us[case][-1]:.0f} us/event" if case in cpu_us else ""
                print(f"round {r + 1} {case}: {rates[case][-1]:,.0f} events/s{cpu}", flush=True)
            assert floor is not None
            floor_phases.append(floor.phases)
            found = compare(rdir / "bench-state.sqlite3", floor.peer_aggs())
            problems += found
            print(f"round {r + 1} floor phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in floor.phases.items()))
            print(f"round {r + 1} verify: {len(floor.aggs)} floor run aggregates, {len(found)} differences", flush=True)
            for case, sfs in set_floors.items():
                set_phases[case].append(sfs[0].phases)
                paths = [rdir / f"{case}.sqlite3"] if len(sfs) == 1 else [
                    rdir / f"{case}-{i}.sqlite3" for i in range(len(sfs))]
                set_aggs = set_floor_aggs(paths)
                found = compare(rdir / "bench-state.sqlite3", set_aggs)
                problems += [f"{case}: {p}" for p in found]
                print(f"round {r + 1} {case} phases (s): "
                      + ", ".join(f"{k} {v:.2f}" for k, v in sfs[0].phases.items()))
                print(f"round {r + 1} verify: {sum(map(len, set_aggs.values()))} {case} run aggregates, "
                      f"{len(found)} differences, {sum(sf.rejected for sf in sfs)} rejected", flush=True)
        med = {k: statistics.median(v) for k, v in rates.items()}
        out: dict[str, Any] = {
            "events": total,
            "rounds": args.rounds,
            "raw_drain_per_s": med["drain"],
            "aggregator_per_s": med["aggregator"],
            "floor_per_s": med["floor"],
            "ratio_aggregator_to_floor": med["aggregator"] / med["floor"],
            "ratio_floor_to_drain": med["floor"] / med["drain"],
            "ratio_aggregator_to_drain": med["aggregator"] / med["drain"],
            "aggregator_cpu_us_per_event": statistics.median(cpu_us["aggregator"]),
            "floor_cpu_us_per_event": statistics.median(cpu_us["floor"]),
            "floor_phases_s": floor_phases,
            "setfloor_per_s": med["setfloor"],
            "ratio_setfloor_to_drain": med["setfloor"] / med["drain"],
            "ratio_aggregator_to_setfloor": med["aggregator"] / med["setfloor"],
            "setfloor_cpu_us_per_event": statistics.median(cpu_us["setfloor"]),
            "setfloor_phases_s": set_phases["setfloor"],
            "verified": not problems,
            "rates": rates,
        }
        line = (
            f"events={total} drain={med['drain']:,.0f}/s aggregator={med['aggregator']:,.0f}/s "
            f"floor={med['floor']:,.0f}/s aggregator/floor={out['ratio_aggregator_to_floor']:.2f}x "
            f"floor/drain={out['ratio_floor_to_drain']:.1%} aggregator/drain={out['ratio_aggregator_to_drain']:.1%} "
            f"CPU us/event aggregator={out['aggregator_cpu_us_per_event']:.0f} "
            f"floor={out['floor_cpu_us_per_event']:.0f} setfloor={out['setfloor_cpu_us_per_event']:.0f} "
            f"setfloor={med['setfloor']:,.0f}/s setfloor/drain={out['ratio_setfloor_to_drain']:.1%}"
        )
        if sharded:
            out["set_shards"] = args.set_shards
            out["setfloor_shards_per_s"] = med["setfloor_shards"]
            out["ratio_setfloor_shards_to_drain"] = med["setfloor_shards"] / med["drain"]
            out["setfloor_shards_cpu_us_per_event"] = statistics.median(cpu_us["setfloor_shards"])
            out["setfloor_shards_phases_s"] = set_phases["setfloor_shards"]
            line += (f" setfloor_{args.set_shards}_shards={med['setfloor_shards']:,.0f}/s "
                     f"CPU {out['setfloor_shards_cpu_us_per_event']:.0f} us/event")
        if args.quix:
            out["quix_peer_per_s"] = med["quix"]
            out["ratio_aggregator_to_quix"] = med["aggregator"] / med["quix"]
            out["ratio_floor_to_quix"] = med["floor"] / med["quix"]
            out["ratio_setfloor_to_quix"] = med["setfloor"] / med["quix"]
            if sharded:
                out["ratio_setfloor_shards_to_quix"] = med["setfloor_shards"] / med["quix"]
            line += (f" quix={med['quix']:,.0f}/s aggregator/quix={out['ratio_aggregator_to_quix']:.2f}x "
                     f"floor/quix={out['ratio_floor_to_quix']:.2f}x setfloor/quix={out['ratio_setfloor_to_quix']:.2f}x")
        print(line + f" verified={not problems}")
        for p in problems[:20]:
            print("DIFF", p)
        if args.json:
            print(json.dumps(out))
        if problems:
            raise SystemExit("a floor and the aggregator disagree")
    finally:
        broker.close()


if __name__ == "__main__":
    asyncio.run(main())
