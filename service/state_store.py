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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import orjson

from service.aggregation import (
    Agg,
    Aggregation,
    AnnotationLeaf,
    LeafKey,
    LeafValue,
    NodeKey,
    NodeState,
    RunAggKey,
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
    """CREATE TABLE IF NOT EXISTS rs_leaves (run TEXT NOT NULL, metric TEXT NOT NULL, dr TEXT NOT NULL,
       lvl INTEGER NOT NULL, f TEXT NOT NULL, s TEXT NOT NULL, src TEXT NOT NULL, value TEXT NOT NULL,
       PRIMARY KEY (run, metric, dr, lvl, f, s, src))""",
    """CREATE TABLE IF NOT EXISTS rs_nodes (run TEXT NOT NULL, metric TEXT NOT NULL, ck TEXT NOT NULL,
       dr TEXT NOT NULL, lvl INTEGER NOT NULL, f TEXT NOT NULL, s TEXT NOT NULL, direct TEXT NOT NULL,
       children TEXT NOT NULL, value TEXT, num DOUBLE PRECISION,
       PRIMARY KEY (run, metric, ck, dr, lvl, f, s))""",
    "CREATE INDEX IF NOT EXISTS rs_nodes_by_row ON rs_nodes (run, dr)",
    "CREATE INDEX IF NOT EXISTS rs_nodes_by_value ON rs_nodes (run, metric, ck, lvl, f, s, num)",
    """CREATE TABLE IF NOT EXISTS rs_run_aggs (run TEXT NOT NULL, metric TEXT NOT NULL, ck TEXT NOT NULL,
       lvl INTEGER NOT NULL, f TEXT NOT NULL, s TEXT NOT NULL, agg TEXT NOT NULL,
       PRIMARY KEY (run, metric, ck, lvl, f, s))""",
    """CREATE TABLE IF NOT EXISTS rs_annotations (run TEXT NOT NULL, uuid TEXT NOT NULL, leaves TEXT NOT NULL,
       PRIMARY KEY (run, uuid))""",
]

_LEAF_PK = "run=? AND metric=? AND dr=? AND lvl=? AND f=? AND s=? AND src=?"
_NODE_PK = "run=? AND metric=? AND ck=? AND dr=? AND lvl=? AND f=? AND s=?"
_RAGG_PK = "run=? AND metric=? AND ck=? AND lvl=? AND f=? AND s=?"


class StateStoreError(RunstreamError):
    """The state store cannot be opened or written."""


class StaleStateError(StateStoreError):
    """Another replica moved a partition's stored offset: this replica no longer owns it."""


# --------------------------------------------------------------------------------------------
# value encoding


def encode_value(value: Value | None) -> str | None:
    if value is None:
        return None
    return orjson.dumps(list(value) if isinstance(value, tuple) else value).decode()


def decode_value(text: str | None) -> Value | None:
    if text is None:
        return None
    v = orjson.loads(text)
    if isinstance(v, list):
        return (int(v[0]), int(v[1]), int(v[2]), int(v[3]))
    return float(v)


def encode_leaf(value: LeafValue) -> str:
    return orjson.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}).decode()


def decode_leaf(text: str) -> LeafValue:
    out: LeafValue = {}
    for k, v in orjson.loads(text).items():
        out[k] = (int(v[0]), int(v[1]), int(v[2]), int(v[3])) if isinstance(v, list) else float(v)
    return out


@dataclass
class Changes:
    """Everything to write in one commit; ``None`` values are deletions."""

    leaves: dict[LeafKey, LeafValue | None] = field(default_factory=dict)
    nodes: dict[NodeKey, NodeState | None] = field(default_factory=dict)
    run_aggs: dict[RunAggKey, Agg | None] = field(default_factory=dict)
    metric_defs: dict[tuple[str, str], Aggregation] = field(default_factory=dict)
    annotations: dict[tuple[str, str], tuple[AnnotationLeaf, ...] | None] = field(default_factory=dict)
    runs: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.leaves) + len(self.nodes) + len(self.run_aggs) + len(self.metric_defs) + len(self.annotations)


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

    def load_leaf(self, key: LeafKey) -> LeafValue | None: ...
    def load_node(self, key: NodeKey) -> NodeState | None: ...
    def load_run_agg(self, key: RunAggKey) -> Agg | None: ...
    def load_metric_def(self, run: str, metric: str) -> Aggregation | None: ...
    def load_annotation(self, run: str, uuid: str) -> tuple[AnnotationLeaf, ...] | None: ...
    def load_offsets(self, group: str, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]: ...
    def commit(
        self,
        group: str,
        changes: Changes,
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

    def __init__(self, kind: str, conn: Any) -> None:
        self.kind = kind
        self._conn = conn
        self._lock = threading.Lock()
        with self._lock:
            cur = self._conn.cursor()
            for stmt in _SCHEMA:
                cur.execute(stmt)
            self._conn.commit()

    @classmethod
    def sqlite(cls, path: Path | str) -> SqlStateBackend:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        conn.execute("PRAGMA cache_size=-65536")
        return cls("sqlite", _SqliteConn(conn))

    @classmethod
    def postgres(cls, dsn: str) -> SqlStateBackend:
        import psycopg

        try:
            conn = psycopg.connect(dsn, autocommit=False)
        except psycopg.Error as exc:
            raise StateStoreError(f"cannot connect to PostgreSQL state store: {exc}") from exc
        return cls("postgres", conn)

    # ---- helpers

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

    def load_leaf(self, key: LeafKey) -> LeafValue | None:
        row = self._one(f"SELECT value FROM rs_leaves WHERE {_LEAF_PK}", key)
        return decode_leaf(row[0]) if row else None

    def load_node(self, key: NodeKey) -> NodeState | None:
        row = self._one(f"SELECT direct, children, value FROM rs_nodes WHERE {_NODE_PK}", key)
        if not row:
            return None
        return NodeState(Agg.decode(row[0]), Agg.decode(row[1]), decode_value(row[2]))

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

    # ---- the one transaction

    def commit(
        self,
        group: str,
        changes: Changes,
        offsets: dict[TopicPartition, int],
        expected: dict[TopicPartition, int | None],
    ) -> None:
        """Write state changes and offsets atomically; StaleStateError if fenced off."""
        with self._lock:
            conn = self._conn
            cur = conn.cursor()
            if self.kind == "sqlite":
                cur.execute("BEGIN IMMEDIATE")
            try:
                self._write_offsets(cur, group, offsets, expected)
                self._write_changes(cur, changes)
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

    def _write_changes(self, cur: Any, ch: Changes) -> None:
        sql = self._sql
        now = time.time()
        if ch.runs:
            cur.executemany(
                sql(
                    "INSERT INTO rs_runs (run, updated_at) VALUES (?, ?) "
                    "ON CONFLICT (run) DO UPDATE SET updated_at=excluded.updated_at"
                ),
                [(r, now) for r in ch.runs],
            )
        if ch.metric_defs:
            cur.executemany(
                sql("INSERT INTO rs_metric_defs (run, metric, aggregation) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"),
                [(r, m, a) for (r, m), a in ch.metric_defs.items()],
            )
        _upsert_delete(
            cur,
            sql,
            ch.leaves,
            "rs_leaves",
            ("run", "metric", "dr", "lvl", "f", "s", "src"),
            ("value",),
            lambda v: (encode_leaf(v),),
        )
        _upsert_delete(
            cur,
            sql,
            ch.nodes,
            "rs_nodes",
            ("run", "metric", "ck", "dr", "lvl", "f", "s"),
            ("direct", "children", "value", "num"),
            lambda n: (
                n.direct.encode(),
                n.children.encode(),
                encode_value(n.value),
                numeric_value(n.value) if n.value is not None else None,
            ),
        )
        _upsert_delete(
            cur,
            sql,
            ch.run_aggs,
            "rs_run_aggs",
            ("run", "metric", "ck", "lvl", "f", "s"),
            ("agg",),
            lambda a: (a.encode(),),
        )
        _upsert_delete(
            cur,
            sql,
            ch.annotations,
            "rs_annotations",
            ("run", "uuid"),
            ("leaves",),
            lambda leaves: (orjson.dumps(leaves).decode(),),
        )

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

    def nodes_for_rows(self, run: str, rows: Sequence[str]) -> list[NodeRow]:
        out: list[NodeRow] = []
        for i in range(0, len(rows), 500):
            chunk = list(rows[i : i + 500])
            marks = ",".join("?" * len(chunk))
            for m, ck, dr, lvl, f, s, v in self._all(
                f"SELECT metric, ck, dr, lvl, f, s, value FROM rs_nodes WHERE run=? AND dr IN ({marks})",
                [run, *chunk],
            ):
                out.append(NodeRow(m, ck, dr, int(lvl), f, s, decode_value(v)))
        return out

    def rows_in_range(
        self, run: str, metric: str, ck: str, level: int, f: str, s: str, lo: float | None, hi: float | None
    ) -> list[str]:
        sql = "SELECT dr FROM rs_nodes WHERE run=? AND metric=? AND ck=? AND lvl=? AND f=? AND s=? AND num IS NOT NULL"
        params: list[Any] = [run, metric, ck, level, f, s]
        if lo is not None:
            sql += " AND num >= ?"
            params.append(lo)
        if hi is not None:
            sql += " AND num <= ?"
            params.append(hi)
        return [r[0] for r in self._all(sql, params)]

    def known_rows(self, run: str, rows: Sequence[str]) -> list[str]:
        found: list[str] = []
        for i in range(0, len(rows), 500):
            chunk = list(rows[i : i + 500])
            marks = ",".join("?" * len(chunk))
            found += [
                r[0]
                for r in self._all(f"SELECT DISTINCT dr FROM rs_nodes WHERE run=? AND dr IN ({marks})", [run, *chunk])
            ]
        return found

    def close(self) -> None:
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
    sql: Any,
    items: dict[Any, Any],
    table: str,
    key_cols: tuple[str, ...],
    val_cols: tuple[str, ...],
    encode: Any,
) -> None:
    if not items:
        return
    upserts = []
    deletes = []
    for key, value in items.items():
        k = key if isinstance(key, tuple) else (key,)
        if value is None:
            deletes.append(k)
        else:
            upserts.append((*k, *encode(value)))
    if upserts:
        cols = key_cols + val_cols
        cur.executemany(
            sql(
                f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                f"ON CONFLICT ({', '.join(key_cols)}) DO UPDATE SET " + ", ".join(f"{c}=excluded.{c}" for c in val_cols)
            ),
            upserts,
        )
    if deletes:
        cur.executemany(sql(f"DELETE FROM {table} WHERE " + " AND ".join(f"{c}=?" for c in key_cols)), deletes)


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


class CachedState:
    """Write-back cache over a backend implementing :class:`~service.aggregation.StateAccess`.

    ``dirty`` holds changes since the last commit (always kept); ``clean`` holds rows known
    to equal the store (or known absent), evicted oldest-first above ``max_clean`` entries.
    """

    def __init__(self, backend: StateBackend, max_clean: int = 200_000) -> None:
        self.backend = backend
        self.max_clean = max_clean
        self.changes = Changes()
        self._clean: dict[tuple[int, Any], Any] = {}

    # generic

    def _get(self, tag: int, key: Any, dirty: dict[Any, Any], load: Any) -> Any:
        v = dirty.get(key, _MISSING)
        if v is not _MISSING:
            return v
        ck = (tag, key)
        v = self._clean.get(ck, _MISSING)
        if v is not _MISSING:
            return v
        v = load(key)
        self._clean[ck] = v
        return v

    def get_leaf(self, key: LeafKey) -> LeafValue | None:
        return cast(LeafValue | None, self._get(0, key, self.changes.leaves, self.backend.load_leaf))

    def put_leaf(self, key: LeafKey, value: LeafValue | None) -> None:
        self.changes.leaves[key] = value

    def get_node(self, key: NodeKey) -> NodeState | None:
        return cast(NodeState | None, self._get(1, key, self.changes.nodes, self.backend.load_node))

    def put_node(self, key: NodeKey, node: NodeState | None) -> None:
        self.changes.nodes[key] = node

    def get_run_agg(self, key: RunAggKey) -> Agg | None:
        return cast(Agg | None, self._get(2, key, self.changes.run_aggs, self.backend.load_run_agg))

    def put_run_agg(self, key: RunAggKey, agg: Agg | None) -> None:
        self.changes.run_aggs[key] = agg

    def get_metric_def(self, run: str, metric: str) -> Aggregation | None:
        key = (run, metric)
        v = self.changes.metric_defs.get(key)
        if v is not None:
            return v
        return cast(Aggregation | None, self._get(3, key, {}, lambda k: self.backend.load_metric_def(k[0], k[1])))

    def put_metric_def(self, run: str, metric: str, aggregation: Aggregation) -> None:
        self.changes.metric_defs[(run, metric)] = aggregation

    def get_annotation(self, run: str, uuid: str) -> tuple[AnnotationLeaf, ...] | None:
        return cast(
            tuple[AnnotationLeaf, ...] | None,
            self._get(4, (run, uuid), self.changes.annotations, lambda k: self.backend.load_annotation(k[0], k[1])),
        )

    def put_annotation(self, run: str, uuid: str, leaves: tuple[AnnotationLeaf, ...] | None) -> None:
        self.changes.annotations[(run, uuid)] = leaves

    def touch_run(self, run: str) -> None:
        self.changes.runs.add(run)

    # commit / reset

    def take_changes(self) -> Changes:
        """Hand the dirty set to a commit; call :meth:`committed` or :meth:`reset` afterwards."""
        ch, self.changes = self.changes, Changes()
        return ch

    def committed(self, ch: Changes) -> None:
        """The changes are durable: they become clean cache entries (oldest evicted)."""
        clean = self._clean
        for tag, d in ((0, ch.leaves), (1, ch.nodes), (2, ch.run_aggs), (4, ch.annotations)):
            for k, v in d.items():
                clean.pop((tag, k), None)
                clean[(tag, k)] = v
        for k, a in ch.metric_defs.items():
            clean[(3, k)] = a
        excess = len(clean) - self.max_clean
        if excess > 0:
            for k in list(_take(clean, excess)):
                del clean[k]

    def reset(self) -> None:
        """Forget everything (after a rebalance or a failed commit): the store is the truth."""
        self.changes = Changes()
        self._clean.clear()


def _take(d: dict[Any, Any], n: int) -> Iterable[Any]:
    it = iter(d)
    for _ in range(n):
        yield next(it)
