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
    Agg,
    Aggregation,
    AnnotationLeaf,
    LeafKey,
    LeafValue,
    MessageOps,
    NodeKey,
    NodeState,
    RunAggKey,
    Value,
    leaf_key,
    node_chain,
    numeric_value,
    run_agg_key,
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

# table → (key columns, value columns), for bulk loads
_TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "rs_leaves": (("run", "metric", "dr", "lvl", "f", "s", "src"), ("value",)),
    "rs_nodes": (("run", "metric", "ck", "dr", "lvl", "f", "s"), ("direct", "children", "value")),
    "rs_run_aggs": (("run", "metric", "ck", "lvl", "f", "s"), ("agg",)),
    "rs_metric_defs": (("run", "metric"), ("aggregation",)),
    "rs_annotations": (("run", "uuid"), ("leaves",)),
}
_INT_COLS = frozenset({"lvl"})

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

    def encode(self) -> EncodedChanges:
        """Immutable row tuples; after this the live objects may change without affecting the write."""
        enc = EncodedChanges(now=time.time())
        enc.runs = sorted(self.runs)
        enc.metric_defs = [(r, m, a) for (r, m), a in self.metric_defs.items()]
        _split(self.leaves, enc.leaf_up, enc.leaf_del, lambda v: (encode_leaf(v),))
        _split(self.nodes, enc.node_up, enc.node_del, _encode_node)
        _split(self.run_aggs, enc.ragg_up, enc.ragg_del, lambda a: (a.encode(),))
        _split(self.annotations, enc.ann_up, enc.ann_del, lambda leaves: (orjson.dumps(leaves).decode(),))
        return enc


@dataclass
class EncodedChanges:
    """:class:`Changes` as rows ready for executemany (upserts and deletes per table)."""

    now: float = 0.0
    runs: list[str] = field(default_factory=list)
    metric_defs: list[tuple[str, str, str]] = field(default_factory=list)
    leaf_up: list[tuple[Any, ...]] = field(default_factory=list)
    leaf_del: list[tuple[Any, ...]] = field(default_factory=list)
    node_up: list[tuple[Any, ...]] = field(default_factory=list)
    node_del: list[tuple[Any, ...]] = field(default_factory=list)
    ragg_up: list[tuple[Any, ...]] = field(default_factory=list)
    ragg_del: list[tuple[Any, ...]] = field(default_factory=list)
    ann_up: list[tuple[Any, ...]] = field(default_factory=list)
    ann_del: list[tuple[Any, ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.metric_defs)
            + len(self.leaf_up)
            + len(self.leaf_del)
            + len(self.node_up)
            + len(self.node_del)
            + len(self.ragg_up)
            + len(self.ragg_del)
            + len(self.ann_up)
            + len(self.ann_del)
        )


def _encode_node(n: NodeState) -> tuple[Any, ...]:
    v = n.value
    return (n.direct.encode(), n.children.encode(), encode_value(v), numeric_value(v) if v is not None else None)


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

    def load_leaf(self, key: LeafKey) -> LeafValue | None: ...
    def load_node(self, key: NodeKey) -> NodeState | None: ...
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
        with self._lock:
            cur = self._conn.cursor()
            for stmt in _SCHEMA:
                cur.execute(stmt)
            self._conn.commit()

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
        for table, up, dels in (
            ("rs_leaves", ch.leaf_up, ch.leaf_del),
            ("rs_nodes", ch.node_up, ch.node_del),
            ("rs_run_aggs", ch.ragg_up, ch.ragg_del),
            ("rs_annotations", ch.ann_up, ch.ann_del),
        ):
            key_cols, val_cols = _TABLES[table]
            if table == "rs_nodes":
                val_cols = (*val_cols, "num")
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


def _decode_leaf_row(r: tuple[Any, ...]) -> tuple[Any, Any]:
    return (r[0], r[1], r[2], int(r[3]), r[4], r[5], r[6]), decode_leaf(r[7])


def _decode_node_row(r: tuple[Any, ...]) -> tuple[Any, Any]:
    return (r[0], r[1], r[2], r[3], int(r[4]), r[5], r[6]), NodeState(
        Agg.decode(r[7]), Agg.decode(r[8]), decode_value(r[9])
    )


def _decode_ragg_row(r: tuple[Any, ...]) -> tuple[Any, Any]:
    return (r[0], r[1], r[2], int(r[3]), r[4], r[5]), Agg.decode(r[6])


def _decode_def_row(r: tuple[Any, ...]) -> tuple[Any, Any]:
    return (r[0], r[1]), r[2]


def _decode_ann_row(r: tuple[Any, ...]) -> tuple[Any, Any]:
    return (r[0], r[1]), tuple((m, dr, int(lvl), f, s) for m, dr, lvl, f, s in orjson.loads(r[2]))


class CachedState:
    """Write-back cache over a backend implementing :class:`~service.aggregation.StateAccess`.

    ``changes`` holds what changed since the last :meth:`take_changes` (always kept); the
    clean maps hold rows known to equal the store once the in-flight commit (if any) lands,
    or known absent (``None``). :meth:`prefetch` loads a whole batch's cold rows with one
    query per table, so the tree update itself never waits on the store. Above
    ``max_clean`` entries the oldest are evicted, but only when no commit is in flight:
    every row of an in-flight commit stays cached until it is durable, which is what lets
    loads read the store concurrently with that commit.
    """

    def __init__(self, backend: StateBackend, max_clean: int = 100_000) -> None:
        self.backend = backend
        self.max_clean = max_clean
        self.changes = Changes()
        self._leaves: dict[LeafKey, LeafValue | None] = {}
        self._nodes: dict[NodeKey, NodeState | None] = {}
        self._run_aggs: dict[RunAggKey, Agg | None] = {}
        self._defs: dict[tuple[str, str], Aggregation | None] = {}
        self._anns: dict[tuple[str, str], tuple[AnnotationLeaf, ...] | None] = {}
        self.loads = 0  # rows asked of the store (bulk and point), for benchmarks

    def __len__(self) -> int:
        return len(self._leaves) + len(self._nodes) + len(self._run_aggs) + len(self._defs) + len(self._anns)

    # point access (StateAccess); a miss here means prefetch did not foresee the key

    def _lookup(self, changes: dict[Any, Any], cache: dict[Any, Any], load: Callable[[Any], Any], key: Any) -> Any:
        """Pending change, else cached row, else one backend read (counted: prefetch should have had it)."""
        v = changes.get(key, _MISSING)
        if v is _MISSING:
            v = cache.get(key, _MISSING)
            if v is _MISSING:
                self.loads += 1
                v = cache[key] = load(key)
        return v

    def get_leaf(self, key: LeafKey) -> LeafValue | None:
        return cast(LeafValue | None, self._lookup(self.changes.leaves, self._leaves, self.backend.load_leaf, key))

    def put_leaf(self, key: LeafKey, value: LeafValue | None) -> None:
        self.changes.leaves[key] = value

    def get_node(self, key: NodeKey) -> NodeState | None:
        return cast(NodeState | None, self._lookup(self.changes.nodes, self._nodes, self.backend.load_node, key))

    def put_node(self, key: NodeKey, node: NodeState | None) -> None:
        self.changes.nodes[key] = node

    def get_run_agg(self, key: RunAggKey) -> Agg | None:
        return cast(Agg | None, self._lookup(self.changes.run_aggs, self._run_aggs, self.backend.load_run_agg, key))

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
        """Load every row ``batch`` will read that is not cached: one query per table per phase."""
        ch = self.changes
        defs: set[tuple[str, str]] = set()
        anns: set[tuple[str, str]] = set()
        leaf_cks: dict[LeafKey, set[str]] = {}
        for ops in batch:
            run = ops.run
            for leaf in ops.metric_rows:
                defs.add((run, leaf.metric))
                k = leaf_key(run, leaf, "m")
                cks = leaf_cks.get(k)
                if cks is None:
                    leaf_cks[k] = set(leaf.value)
                else:
                    cks.update(leaf.value)
            for ann in ops.annotations:
                anns.add((run, ann.uuid))
                src = "u:" + ann.uuid
                for leaf in ann.leaves:
                    defs.add((run, leaf.metric))
                    k = leaf_key(run, leaf, src)
                    cks = leaf_cks.get(k)
                    if cks is None:
                        leaf_cks[k] = set(leaf.value)
                    else:
                        cks.update(leaf.value)
        self._load("rs_metric_defs", defs, ch.metric_defs, self._defs, _decode_def_row)
        self._load("rs_annotations", anns, ch.annotations, self._anns, _decode_ann_row)
        old_defs: set[tuple[str, str]] = set()
        for run, uuid in anns:
            old = ch.annotations.get((run, uuid), _MISSING)
            if old is _MISSING:
                old = self._anns.get((run, uuid))
            src = "u:" + uuid
            for metric, dr, level, f, s in old or ():
                leaf_cks.setdefault((run, metric, dr, level, f, s, src), set())
                old_defs.add((run, metric))  # removing an old leaf reads its metric's aggregation
        self._load("rs_metric_defs", old_defs, ch.metric_defs, self._defs, _decode_def_row)
        self._load("rs_leaves", leaf_cks, ch.leaves, self._leaves, _decode_leaf_row)
        nodes: set[NodeKey] = set()
        for k, cks in leaf_cks.items():
            cur = ch.leaves.get(k, _MISSING)
            if cur is _MISSING:
                cur = self._leaves.get(k)
            for ck in cks.union(cur) if cur else cks:
                nodes.update(node_chain(k, ck))
        self._load("rs_nodes", nodes, ch.nodes, self._nodes, _decode_node_row)
        self._load("rs_run_aggs", {run_agg_key(n) for n in nodes}, ch.run_aggs, self._run_aggs, _decode_ragg_row)

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
        everything and the store is the truth again.
        """
        ch, self.changes = self.changes, Changes()
        pairs: tuple[tuple[dict[Any, Any], dict[Any, Any]], ...] = (
            (ch.leaves, self._leaves),
            (ch.nodes, self._nodes),
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
        for clean in (self._leaves, self._nodes, self._run_aggs, self._defs, self._anns):
            n = min(len(clean), -(-excess * len(clean) // total))
            if n:
                for k in list(_take(clean, n)):
                    del clean[k]

    def reset(self) -> None:
        """Forget everything (after a rebalance or a failed commit): the store is the truth."""
        self.changes = Changes()
        for clean in (self._leaves, self._nodes, self._run_aggs, self._defs, self._anns):
            clean.clear()


def _take(d: dict[Any, Any], n: int) -> Iterable[Any]:
    it = iter(d)
    for _ in range(n):
        yield next(it)
