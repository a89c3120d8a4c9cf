"""The state store: SQLite (one replica) or PostgreSQL (several replicas) behind one interface.

Why one transaction: the aggregates and the consumed offsets are written together
(:meth:`SqlStateBackend.commit`), so after a crash the state is exactly the effect of the
messages before the stored offsets and the consumer resumes right there — exactly-once.

Why fencing: each commit only moves a partition's offset forward if it still holds the
value this replica loaded when it was assigned the partition. A replica that lost the
partition in a rebalance but still tries to write (a zombie) fails with
:class:`StaleStateError` instead of overwriting its successor's aggregates.
"""

from __future__ import annotations

import contextlib
import operator
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, Protocol, cast

import orjson

from service.aggregation import (
    Agg,
    AnnotationLeaf,
    RunAggKey,
    Tree,
    TreeKey,
)
from service.config import Settings
from service.errors import ConfigError, RunstreamError
from service.events.constants import Aggregation
from service.state.codec import Changes, EncodedChanges, decode_tree
from service.state.query import StateQueries, StateReader

PartitionKey = tuple[str, int]  # (topic, partition): a plain tuple, cheap as a dict key

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
# primary-key column order where it differs from the key columns above (writes go in key order)
_PK_ORDER: dict[str, tuple[str, ...]] = {"rs_trees": ("run", "dr", "metric")}

_RAGG_PK = "run=? AND metric=? AND ck=? AND lvl=? AND f=? AND s=?"
_NUM_COLS = ("run", "metric", "ck", "lvl", "f", "s", "num", "dr")
_NUM_PK = " AND ".join(f"{c}=?" for c in _NUM_COLS)


class StateStoreError(RunstreamError):
    """The state store cannot be opened or written."""


class StaleStateError(StateStoreError):
    """Another replica moved a partition's stored offset: this replica no longer owns it."""

_SCHEMA_LOCK_ID = 0x72756E73  # PostgreSQL advisory lock key that serializes schema creation ("runs")

class StateBackend(StateReader, Protocol):
    """The storage interface (the reads of StateReader, plus loads and the commit);
    :class:`SqlStateBackend` implements it for SQLite and PostgreSQL."""

    def load_tree(self, key: TreeKey) -> Tree | None: ...
    def load_run_agg(self, key: RunAggKey) -> Agg | None: ...
    def load_metric_def(self, run: str, metric: str) -> Aggregation | None: ...
    def load_annotation(self, run: str, uuid: str) -> tuple[AnnotationLeaf, ...] | None: ...
    def load_offsets(self, group: str, partitions: Iterable[PartitionKey]) -> dict[PartitionKey, int]: ...
    def load_many(self, table: str, keys: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]: ...
    def commit(
        self,
        group: str,
        changes: Changes | EncodedChanges,
        offsets: dict[PartitionKey, int],
        expected: dict[PartitionKey, int | None],
    ) -> None: ...
    def close(self) -> None: ...


class SqlStateBackend(StateQueries):
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
        self._pg_temps: set[str] = set()  # temporary tables created in this session (PostgreSQL)
        self._checkpointer: _Checkpointer | None = None  # SQLite: WAL checkpoints off the commit path
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
    def sqlite(cls, path: Path | str, *, mmap_bytes: int = 0) -> SqlStateBackend:
        """``mmap_bytes``: read up to that much of the file through a memory map (see QUERY_MMAP_BYTES)."""

        def connect(autocheckpoint: bool = True) -> _SqliteConn:
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            # WAL + synchronous=NORMAL: a commit is durable across a process crash (kill -9: the WAL
            # is in the OS page cache and replayed on open); only an OS crash or power loss can drop
            # the last commits, and then state and offsets roll back *together* (one transaction),
            # so exactly-once still holds — the messages are simply re-applied.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA cache_size=-16384")  # 16 MiB page cache per connection
            conn.execute("PRAGMA temp_store=MEMORY")
            if mmap_bytes:
                conn.execute(f"PRAGMA mmap_size={int(mmap_bytes)}")
            if not autocheckpoint:
                # The writer never checkpoints: copying WAL pages into the database (and its
                # fsync) would run inside COMMIT, on the commit's critical path. The backend's
                # checkpointer thread does it between commits on its own connection instead.
                conn.execute("PRAGMA wal_autocheckpoint=0")
            return _SqliteConn(conn)

        backend = cls("sqlite", connect(autocheckpoint=False), reader=connect)
        backend._checkpointer = _Checkpointer(lambda: connect())
        return backend

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

    def load_offsets(self, group: str, partitions: Iterable[PartitionKey]) -> dict[PartitionKey, int]:
        out: dict[PartitionKey, int] = {}
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
        offsets: dict[PartitionKey, int],
        expected: dict[PartitionKey, int | None],
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
                self._pg_temps.clear()  # created in the rolled-back transaction: gone with it
                raise
            conn.commit()
        if self._checkpointer is not None:
            self._checkpointer.poke()

    def _write_offsets(
        self, cur: Any, group: str, offsets: dict[PartitionKey, int], expected: dict[PartitionKey, int | None]
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
        if self.kind == "postgres":
            self._pg_copy_write(cur, "rs_node_nums", _NUM_COLS, (), ch.nv_up, ch.nv_del)
            for table, up, dels in (
                ("rs_trees", ch.tree_up, ch.tree_del),
                ("rs_run_aggs", ch.ragg_up, ch.ragg_del),
                ("rs_annotations", ch.ann_up, ch.ann_del),
            ):
                key_cols, val_cols = _TABLES[table]
                self._pg_copy_write(cur, table, key_cols, val_cols, up, dels)
            return
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

    def _pg_copy_write(
        self,
        cur: Any,
        table: str,
        key_cols: tuple[str, ...],
        val_cols: tuple[str, ...],
        upserts: list[tuple[Any, ...]],
        deletes: list[tuple[Any, ...]],
    ) -> None:
        """PostgreSQL: deletes, then upserts, each as one COPY into a temporary table and one
        set-based statement (a statement per row, or thousands of bind parameters per statement,
        costs the server a parse and plan each; COPY streams the rows)."""
        keys = ", ".join(key_cols)
        if deletes:
            tmp = f"rs_tmp_del_{table}"
            self._pg_temp(cur, tmp, f"SELECT {keys} FROM {table}")
            with cur.copy(f"COPY {tmp} ({keys}) FROM STDIN") as cp:
                for r in deletes:
                    cp.write_row(r)
            on = " AND ".join(f"t.{c} = d.{c}" for c in key_cols)
            cur.execute(f"DELETE FROM {table} t USING {tmp} d WHERE {on}")
        if upserts:
            cols = ", ".join(key_cols + val_cols)
            tmp = f"rs_tmp_up_{table}"
            self._pg_temp(cur, tmp, f"SELECT {cols} FROM {table}")
            with cur.copy(f"COPY {tmp} ({cols}) FROM STDIN") as cp:
                for r in upserts:
                    cp.write_row(r)
            action = "DO UPDATE SET " + ", ".join(f"{c}=excluded.{c}" for c in val_cols) if val_cols else "DO NOTHING"
            cur.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {tmp} ORDER BY {keys} "
                        f"ON CONFLICT ({keys}) {action}")

    def _pg_temp(self, cur: Any, name: str, like: str) -> None:
        """A session temporary table shaped like ``like``'s result, emptied at every commit."""
        if name not in self._pg_temps:
            cur.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {name} ON COMMIT DELETE ROWS AS {like} WITH NO DATA")
            self._pg_temps.add(name)
    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        with self._rlock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        with self._lock:
            self._conn.close()


class _Checkpointer:
    """A thread that checkpoints the SQLite WAL after commits, on its own connection.

    Why: with the writer's autocheckpoint on, every few commits one COMMIT also copies the
    WAL into the database file and fsyncs it (a third of the commit thread's time, measured).
    PASSIVE checkpoints here never block the writer or readers; the WAL restarts from the top
    at the first commit after a checkpoint caught up with it, so its size stays bounded by
    what a couple of commits write.
    """

    def __init__(self, connect: Callable[[], _SqliteConn]) -> None:
        self._connect = connect
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        conn = self._connect()
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._closing:
                    return
                # busy or locked: the next commit pokes again; the WAL only grows meanwhile
                with contextlib.suppress(sqlite3.Error):
                    conn.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            conn.close()

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


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
    pk = operator.itemgetter(*(key_cols.index(c) for c in _PK_ORDER.get(table, key_cols)))
    if upserts:
        # Primary-key order: neighbouring rows share b-tree pages (about 2x faster than arrival order).
        upserts.sort(key=pk)
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
            cur.execute(sql(head + ", ".join([one] * len(chunk)) + tail), list(chain.from_iterable(chunk)))
    if deletes:
        deletes.sort(key=pk)
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
        cur.execute(sql(stmt), list(chain.from_iterable(chunk)))


# Query-side SQLite connections read the file through a memory map of up to this size. Why: a
# filter or slice reads trees at random places in the file (one page per data row); through
# read() each page is a system call and a copy into SQLite's page cache, through the map it is
# a memory access (measured: a 1,000-row filter at 1M data rows reads about twice as fast).
# The mapped pages are the OS page cache the file is in anyway; they count towards the
# process's RSS once touched, which is why the aggregator's own connections do not map.
QUERY_MMAP_BYTES = 1 << 30


def open_backend(settings: Settings, *, queries: bool = False) -> SqlStateBackend:
    """The backend Settings.state_backend names (a new connection each call).

    ``queries``: the backend serves the query API (SQLite: read through QUERY_MMAP_BYTES).
    """
    if settings.state_backend == "postgres":
        if not settings.state_postgres_dsn:
            raise ConfigError("RUNSTREAM_STATE_BACKEND=postgres needs RUNSTREAM_STATE_POSTGRES_DSN")
        return SqlStateBackend.postgres(settings.state_postgres_dsn)
    return SqlStateBackend.sqlite(settings.state_sqlite_path, mmap_bytes=QUERY_MMAP_BYTES if queries else 0)


