"""Aggregator state: SQLite (one replica) or PostgreSQL (several replicas) behind one interface.

Why one transaction: the aggregates and the consumed offsets are written together
(:meth:`SqlStateBackend.commit`), so after a crash the state is exactly the effect of the
messages before the stored offsets and the consumer resumes right there — exactly-once.

Why fencing: each commit only moves a partition's offset forward if it still holds the
value this replica loaded when it was assigned the partition. A replica that lost the
partition in a rebalance but still tries to write (a zombie) fails with
:class:`StaleStateError` instead of overwriting its successor's aggregates.

Why a cache: :class:`CachedState` is the :class:`~service.aggregation.StateAccess` the
tree update runs against. Changes collect in memory (dirty) until the next commit; rows read
from the store stay in a bounded cache of hot rows, so memory does not grow with the run.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import orjson

from service.aggregation import (
    LEVEL_DATA_ROW,
    LEVEL_FEATURE,
    LEVEL_SUBCLASS,
    Agg,
    Aggregation,
    AnnotationLeaf,
    LeafKey,
    LeafSub,
    LeafValue,
    MessageOps,
    NodeKey,
    NodeMove,
    NodeSub,
    RunAggKey,
    Tree,
    TreeKey,
    Value,
    numeric_value,
)
from service.config import Settings
from service.errors import ConfigError, RunstreamError

TopicPartition = tuple[str, int]

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS rs_offsets (grp TEXT NOT NULL, topic TEXT NOT NULL, part INTEGER NOT NULL,
       next_offset BIGINT NOT NULL, PRIMARY KEY (grp, topic, part))""",
    """CREATE TABLE IF NOT EXISTS rs_runs (run TEXT PRIMARY KEY, updated_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS rs_metric_defs (run TEXT NOT NULL, metric TEXT NOT NULL,
       aggregation TEXT NOT NULL, PRIMARY KEY (run, metric))""",
    # one row per (model run, data row, metric): that data row's whole metric tree (leaves and
    # nodes) as one JSON blob — see Tree. Key order (run, dr, metric): a slice reads a data
    # row's trees by primary key. num = the data row's plain value (as a filter compares it),
    # indexed for the common filter. WITHOUT ROWID on SQLite: the primary key is the table.
    """CREATE TABLE IF NOT EXISTS rs_trees (run TEXT NOT NULL, dr TEXT NOT NULL, metric TEXT NOT NULL,
       tree TEXT NOT NULL, num DOUBLE PRECISION, PRIMARY KEY (run, dr, metric)){without_rowid}""",
    "CREATE INDEX IF NOT EXISTS rs_trees_by_value ON rs_trees (run, metric, num)",
    # one row per numeric node value other than the data row's plain value (that is rs_trees.num):
    # features, subclasses, confidence keys, so a filter on them is a range scan of the primary
    # key instead of a scan of every tree. The number is part of the key, so the table is its own
    # index (one b-tree write per changed value: delete the old number's row, insert the new).
    # Written with the trees (same transaction), only for nodes whose value changed.
    """CREATE TABLE IF NOT EXISTS rs_node_nums (run TEXT NOT NULL, metric TEXT NOT NULL, ck TEXT NOT NULL,
       lvl INTEGER NOT NULL, f TEXT NOT NULL, s TEXT NOT NULL, num DOUBLE PRECISION NOT NULL, dr TEXT NOT NULL,
       PRIMARY KEY (run, metric, ck, lvl, f, s, num, dr)){without_rowid}""",
    """CREATE TABLE IF NOT EXISTS rs_run_aggs (run TEXT NOT NULL, metric TEXT NOT NULL, ck TEXT NOT NULL,
       lvl INTEGER NOT NULL, f TEXT NOT NULL, s TEXT NOT NULL, agg TEXT NOT NULL,
       PRIMARY KEY (run, metric, ck, lvl, f, s))""",
    """CREATE TABLE IF NOT EXISTS rs_annotations (run TEXT NOT NULL, uuid TEXT NOT NULL, leaves TEXT NOT NULL,
       PRIMARY KEY (run, uuid))""",
]

# table → (key columns, value columns), for bulk loads
_TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "rs_trees": (("run", "metric", "dr"), ("tree", "num")),
    "rs_run_aggs": (("run", "metric", "ck", "lvl", "f", "s"), ("agg",)),
    "rs_metric_defs": (("run", "metric"), ("aggregation",)),
    "rs_annotations": (("run", "uuid"), ("leaves",)),
}
_INT_COLS = frozenset({"lvl"})

_RAGG_PK = "run=? AND metric=? AND ck=? AND lvl=? AND f=? AND s=?"
_NUM_COLS = ("run", "metric", "ck", "lvl", "f", "s", "num", "dr")
_NUM_PK = " AND ".join(f"{c}=?" for c in _NUM_COLS)


class StateStoreError(RunstreamError):
    """The state store cannot be opened or written."""


class StaleStateError(StateStoreError):
    """Another replica moved a partition's stored offset: this replica no longer owns it."""


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


_SCHEMA_LOCK_ID = 0x72756E73  # PostgreSQL advisory lock key that serializes schema creation ("runs")
_ROOT = ("", LEVEL_DATA_ROW, "", "")  # the data-row node of the plain (not confidence-keyed) value


def _num(v: Value) -> float | None:
    """The indexed number of a node value (None: not comparable, e.g. F1 undefined, or NaN)."""
    num = v if type(v) is float else numeric_value(v)
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
            if sub == _ROOT:
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
        root_key = _ROOT
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


class StateBackend(Protocol):
    """The storage interface; :class:`SqlStateBackend` implements it for SQLite and PostgreSQL."""

    def load_tree(self, key: TreeKey) -> Tree | None: ...
    def load_run_agg(self, key: RunAggKey) -> Agg | None: ...
    def load_metric_def(self, run: str, metric: str) -> Aggregation | None: ...
    def load_annotation(self, run: str, uuid: str) -> tuple[AnnotationLeaf, ...] | None: ...
    def load_offsets(self, group: str, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]: ...
    def load_many(self, table: str, keys: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]: ...
    def commit(
        self,
        group: str,
        changes: Changes | EncodedChanges,
        offsets: dict[TopicPartition, int],
        expected: dict[TopicPartition, int | None],
    ) -> None: ...
    def list_runs(self) -> list[tuple[str, float]]: ...
    def run_exists(self, run: str) -> bool: ...
    def metric_defs(self, run: str) -> dict[str, Aggregation]: ...
    def run_aggs(self, run: str) -> list[tuple[str, str, int, str, str, Agg]]: ...
    def nodes_for_rows(self, run: str, rows: Sequence[str]) -> list[NodeRow]: ...
    def rows_in_range(
        self, run: str, metric: str, ck: str, level: int, f: str, s: str, lo: float | None, hi: float | None
    ) -> list[str]: ...
    def known_rows(self, run: str, rows: Sequence[str]) -> list[str]: ...
    def close(self) -> None: ...


class SqlStateBackend:
    """SQLite or PostgreSQL; the SQL is shared, only placeholders and transaction start differ.

    One connection, guarded by a lock: the aggregator and the query API each open their own
    backend, so neither waits on the other's connection.
    """

    def __init__(self, kind: str, conn: Any, reader: Callable[[], Any] | None = None) -> None:
        self.kind = kind
        self._conn = conn
        self._lock = threading.Lock()
        # Bulk loads use their own connection (opened on first use) so they can run while a
        # commit is being written. They only ever read keys the writer is not changing: the
        # aggregator's cache holds every key of an in-flight commit until it is durable.
        self._open_reader = reader
        self._reader: Any = None
        self._rlock = threading.Lock()
        without_rowid = "" if kind == "postgres" else " WITHOUT ROWID"
        with self._lock:
            cur = self._conn.cursor()
            if kind == "postgres":
                # CREATE ... IF NOT EXISTS is not safe against a concurrent creator in PostgreSQL
                # (duplicate key in pg_type): replicas and their query APIs open the store at the
                # same moment, so schema creation is serialized; the lock ends with the transaction.
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_ID,))
            for stmt in _SCHEMA:
                cur.execute(stmt.format(without_rowid=without_rowid))
            cur.execute(self._exists("rs_nodes"))
            (has_legacy,) = cur.fetchone()
            cur.execute(self._exists("rs_node_values"))
            (has_old_index,) = cur.fetchone()
            if has_old_index:
                # the node-value index with a separate value index: same rows, moved into the
                # table keyed by value (in the schema transaction: replicas wait for it)
                if kind == "sqlite":
                    cur.execute("BEGIN IMMEDIATE")
                cols = ", ".join(_NUM_COLS)
                cur.execute(
                    f"INSERT INTO rs_node_nums ({cols}) SELECT {cols} FROM rs_node_values "
                    "WHERE true ON CONFLICT DO NOTHING"
                )
                cur.execute("DROP TABLE rs_node_values")
            self._conn.commit()
        if has_legacy:
            # The per-node layout (rs_leaves/rs_nodes, up to 6b2f620) cannot be read as trees;
            # serving or extending it would silently give wrong aggregates.
            raise StateStoreError(
                "state store has the old per-node layout (table rs_nodes); rebuild it: drop the aggregator's "
                "rs_* tables (or delete the SQLite file) and let the aggregator re-read the topics from the start"
            )

    @classmethod
    def sqlite(cls, path: Path | str) -> SqlStateBackend:
        def connect() -> _SqliteConn:
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            # WAL + synchronous=NORMAL: a commit is durable across a process crash (kill -9: the WAL
            # is in the OS page cache and replayed on open); only an OS crash or power loss can drop
            # the last commits, and then state and offsets roll back *together* (one transaction),
            # so exactly-once still holds — the messages are simply re-applied.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA cache_size=-16384")  # 16 MiB page cache per connection
            conn.execute("PRAGMA temp_store=MEMORY")
            return _SqliteConn(conn)

        return cls("sqlite", connect(), reader=connect)

    @classmethod
    def postgres(cls, dsn: str) -> SqlStateBackend:
        import psycopg

        try:
            conn = psycopg.connect(dsn, autocommit=False)
        except psycopg.Error as exc:
            raise StateStoreError(f"cannot connect to PostgreSQL state store: {exc}") from exc

        def reader() -> Any:
            return psycopg.connect(dsn, autocommit=True)  # autocommit: no snapshot held between loads

        return cls("postgres", conn, reader=reader)

    # ---- helpers

    def _exists(self, table: str) -> str:
        if self.kind == "postgres":
            return f"SELECT to_regclass('{table}') IS NOT NULL"
        return f"SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = '{table}')"

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.kind == "postgres" else sql

    def _one(self, sql: str, params: Sequence[Any]) -> Any:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute(self._sql(sql), params)
            rows = cur.fetchall()  # exhaust and close: an open statement would pin an old snapshot
            cur.close()
            row = rows[0] if rows else None
            if self.kind == "postgres":
                self._conn.commit()  # end the read transaction: no long-lived snapshot
            return row

    def _all(self, sql: str, params: Sequence[Any]) -> list[Any]:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute(self._sql(sql), params)
            rows = list(cur.fetchall())
            cur.close()
            if self.kind == "postgres":
                self._conn.commit()
            return rows

    # ---- point loads (the aggregator's cache misses)

    def load_tree(self, key: TreeKey) -> Tree | None:
        row = self._one("SELECT tree FROM rs_trees WHERE run=? AND metric=? AND dr=?", key)
        return decode_tree(row[0]) if row else None

    def load_run_agg(self, key: RunAggKey) -> Agg | None:
        row = self._one(f"SELECT agg FROM rs_run_aggs WHERE {_RAGG_PK}", key)
        return Agg.decode(row[0]) if row else None

    def load_metric_def(self, run: str, metric: str) -> Aggregation | None:
        row = self._one("SELECT aggregation FROM rs_metric_defs WHERE run=? AND metric=?", (run, metric))
        return cast(Aggregation, row[0]) if row else None

    def load_annotation(self, run: str, uuid: str) -> tuple[AnnotationLeaf, ...] | None:
        row = self._one("SELECT leaves FROM rs_annotations WHERE run=? AND uuid=?", (run, uuid))
        if not row:
            return None
        return tuple((m, dr, int(lvl), f, s) for m, dr, lvl, f, s in orjson.loads(row[0]))

    def load_offsets(self, group: str, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        out: dict[TopicPartition, int] = {}
        for topic, part in partitions:
            row = self._one(
                "SELECT next_offset FROM rs_offsets WHERE grp=? AND topic=? AND part=?", (group, topic, part)
            )
            if row:
                out[(topic, part)] = int(row[0])
        return out

    def load_many(self, table: str, keys: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The stored rows (key columns, then value columns) of ``keys``; absent keys are left out.

        One statement per chunk: the keys as a VALUES list joined to the primary key (SQLite
        plans a row-value ``IN`` as a table scan, the join as index lookups).
        """
        key_cols, val_cols = _TABLES[table]
        n = len(key_cols)
        per = max(1, min(2000, 30000 // n))
        cols = ", ".join(f"k{i}" for i in range(n))
        on = " AND ".join(f"t.{c} = k.k{i}" for i, c in enumerate(key_cols))
        sel = ", ".join(f"t.{c}" for c in (*key_cols, *val_cols))
        mark = "%s" if self.kind == "postgres" else "?"
        one = "(" + ", ".join(f"CAST({mark} AS INTEGER)" if c in _INT_COLS else mark for c in key_cols) + ")"
        out: list[tuple[Any, ...]] = []
        with self._rlock:
            if self._reader is None:
                self._reader = self._open_reader() if self._open_reader is not None else None
            conn = self._reader if self._reader is not None else self._conn
            lock = self._lock if self._reader is None else None
            if lock is not None:
                lock.acquire()
            try:
                cur = conn.cursor()
                for i in range(0, len(keys), per):
                    chunk = keys[i : i + per]
                    values = ", ".join([one] * len(chunk))
                    sql = f"WITH k({cols}) AS (VALUES {values}) SELECT {sel} FROM k JOIN {table} t ON {on}"
                    cur.execute(sql, [x for k in chunk for x in k])
                    out += cur.fetchall()
                cur.close()
                if lock is not None and self.kind == "postgres":
                    conn.commit()
            finally:
                if lock is not None:
                    lock.release()
        return out

    # ---- the one transaction

    def commit(
        self,
        group: str,
        changes: Changes | EncodedChanges,
        offsets: dict[TopicPartition, int],
        expected: dict[TopicPartition, int | None],
    ) -> None:
        """Write state changes and offsets atomically; StaleStateError if fenced off."""
        enc = changes.encode() if isinstance(changes, Changes) else changes
        with self._lock:
            conn = self._conn
            cur = conn.cursor()
            if self.kind == "sqlite":
                cur.execute("BEGIN IMMEDIATE")
            try:
                self._write_offsets(cur, group, offsets, expected)
                self._write_changes(cur, enc)
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def _write_offsets(
        self, cur: Any, group: str, offsets: dict[TopicPartition, int], expected: dict[TopicPartition, int | None]
    ) -> None:
        for (topic, part), nxt in sorted(offsets.items()):
            exp = expected.get((topic, part))
            if exp is None:
                cur.execute(
                    self._sql(
                        "INSERT INTO rs_offsets (grp, topic, part, next_offset) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (grp, topic, part) DO NOTHING"
                    ),
                    (group, topic, part, nxt),
                )
            else:
                cur.execute(
                    self._sql(
                        "UPDATE rs_offsets SET next_offset=? WHERE grp=? AND topic=? AND part=? AND next_offset=?"
                    ),
                    (nxt, group, topic, part, exp),
                )
            if cur.rowcount != 1:
                raise StaleStateError(
                    f"offset of {topic}[{part}] for group {group!r} was moved by another replica "
                    f"(expected {exp}); this replica no longer owns the partition"
                )

    def _write_changes(self, cur: Any, ch: EncodedChanges) -> None:
        sql = self._sql
        if ch.runs:
            cur.executemany(
                sql(
                    "INSERT INTO rs_runs (run, updated_at) VALUES (?, ?) "
                    "ON CONFLICT (run) DO UPDATE SET updated_at=excluded.updated_at"
                ),
                [(r, ch.now) for r in ch.runs],
            )
        if ch.metric_defs:
            cur.executemany(
                sql("INSERT INTO rs_metric_defs (run, metric, aggregation) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"),
                ch.metric_defs,
            )
        if ch.nv_del:
            ch.nv_del.sort()
            cur.executemany(sql(f"DELETE FROM rs_node_nums WHERE {_NUM_PK}"), ch.nv_del)
        if ch.nv_up:
            _insert_many(cur, sql, "rs_node_nums", _NUM_COLS, ch.nv_up)
        for table, up, dels in (
            ("rs_trees", ch.tree_up, ch.tree_del),
            ("rs_run_aggs", ch.ragg_up, ch.ragg_del),
            ("rs_annotations", ch.ann_up, ch.ann_del),
        ):
            key_cols, val_cols = _TABLES[table]
            _upsert_delete(cur, sql, table, key_cols, val_cols, up, dels)

    # ---- queries (the API)

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
        if (ck, level, f, s) == _ROOT:
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

    def close(self) -> None:
        with self._rlock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        with self._lock:
            self._conn.close()


class _SqliteConn:
    """sqlite3 in autocommit mode with explicit BEGIN, so reads never hold a snapshot open."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._c = conn

    def cursor(self) -> sqlite3.Cursor:
        return self._c.cursor()

    def commit(self) -> None:
        if self._c.in_transaction:
            self._c.execute("COMMIT")

    def rollback(self) -> None:
        if self._c.in_transaction:
            self._c.execute("ROLLBACK")

    def close(self) -> None:
        self._c.close()


def _upsert_delete(
    cur: Any,
    sql: Callable[[str], str],
    table: str,
    key_cols: tuple[str, ...],
    val_cols: tuple[str, ...],
    upserts: list[tuple[Any, ...]],
    deletes: list[tuple[Any, ...]],
) -> None:
    n = len(key_cols)
    if upserts:
        # Key order: neighbouring rows share b-tree pages (about 2x faster than arrival order).
        upserts.sort(key=lambda r: r[:n])
        cols = key_cols + val_cols
        one = "(" + ", ".join("?" * len(cols)) + ")"
        head = f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
        tail = f" ON CONFLICT ({', '.join(key_cols)}) DO UPDATE SET " + ", ".join(
            f"{c}=excluded.{c}" for c in val_cols
        )
        # Many rows per statement rather than executemany: sqlite3 releases the GIL around every
        # step, and a commit thread that must win the GIL back once per row crawls while the
        # event loop thread is busy applying the next batch.
        per = max(1, min(1000, 30000 // len(cols)))
        for i in range(0, len(upserts), per):
            chunk = upserts[i : i + per]
            cur.execute(sql(head + ", ".join([one] * len(chunk)) + tail), [x for r in chunk for x in r])
    if deletes:
        deletes.sort()
        cur.executemany(sql(f"DELETE FROM {table} WHERE " + " AND ".join(f"{c}=?" for c in key_cols)), deletes)


def _insert_many(
    cur: Any, sql: Callable[[str], str], table: str, cols: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    """Plain inserts in key order, many rows per statement (see :func:`_upsert_delete`)."""
    rows.sort()
    one = "(" + ", ".join("?" * len(cols)) + ")"
    head = f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
    per = max(1, min(1000, 30000 // len(cols)))
    for i in range(0, len(rows), per):
        chunk = rows[i : i + per]
        stmt = head + ", ".join([one] * len(chunk)) + " ON CONFLICT DO NOTHING"
        cur.execute(sql(stmt), [x for r in chunk for x in r])


def open_backend(settings: Settings) -> SqlStateBackend:
    """The backend Settings.state_backend names (a new connection each call)."""
    if settings.state_backend == "postgres":
        if not settings.state_postgres_dsn:
            raise ConfigError("RUNSTREAM_STATE_BACKEND=postgres needs RUNSTREAM_STATE_POSTGRES_DSN")
        return SqlStateBackend.postgres(settings.state_postgres_dsn)
    return SqlStateBackend.sqlite(settings.state_sqlite_path)


# --------------------------------------------------------------------------------------------
# the cache the aggregator updates


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
            for leaf in (*ops.metric_rows, *(x for ann in ops.annotations for x in ann.leaves)):
                metric = leaf.metric
                defs.add((run, metric))
                trees.add((run, metric, leaf.data_row))
                level, f, s = leaf.level, leaf.feature or "", leaf.subclass or ""
                for ck in leaf.value:
                    places.add((run, metric, level, f, s, ck))
            for ann in ops.annotations:
                anns.add((run, ann.uuid))
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
