"""SQLite persistence for the local Labelbox API.

Synchronous by design: every call runs on one dedicated DB thread (see app.py), so the
connection is never shared between threads and writes are naturally serialized. WAL and
``synchronous=NORMAL`` keep import commits cheap; imports are one transaction each.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from devstack.local_labelbox.imports import ImportPlan
from service.errors import RunstreamError

PAGE_SIZE = 16384

SCHEMA = """
CREATE TABLE IF NOT EXISTS data_rows(
  id TEXT PRIMARY KEY, global_key TEXT UNIQUE, row_data TEXT, external_id TEXT,
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS projects(id TEXT PRIMARY KEY, name TEXT);
CREATE TABLE IF NOT EXISTS labels(id TEXT PRIMARY KEY, project_id TEXT NOT NULL, data_row_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS labels_project ON labels(project_id);
CREATE TABLE IF NOT EXISTS model_runs(
  id TEXT PRIMARY KEY, name TEXT NOT NULL, model_id TEXT NOT NULL, training_metadata TEXT,
  created_by TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS model_run_data_rows(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, model_run_id TEXT NOT NULL,
  data_row_id TEXT NOT NULL, label_id TEXT, data_split TEXT NOT NULL DEFAULT 'UNASSIGNED',
  UNIQUE(model_run_id, data_row_id));
CREATE TABLE IF NOT EXISTS tasks(
  id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, error_message TEXT, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS imports(
  id TEXT PRIMARY KEY, model_run_id TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL,
  progress TEXT NOT NULL, source TEXT NOT NULL, file_url TEXT, fail_requested INTEGER NOT NULL,
  created_at REAL NOT NULL, started_at REAL, finished_at REAL, total_rows INTEGER,
  failure_rows INTEGER, error_message TEXT, UNIQUE(model_run_id, name));
CREATE TABLE IF NOT EXISTS import_files(
  import_id TEXT NOT NULL, kind TEXT NOT NULL, content BLOB NOT NULL, PRIMARY KEY(import_id, kind));
CREATE TABLE IF NOT EXISTS predictions(
  model_run_id TEXT NOT NULL, uuid TEXT NOT NULL, data_row_id TEXT NOT NULL, name TEXT,
  body BLOB NOT NULL, import_id TEXT NOT NULL, PRIMARY KEY(model_run_id, uuid));
CREATE TABLE IF NOT EXISTS metrics(
  model_run_id TEXT NOT NULL, data_row_id TEXT NOT NULL, metric_name TEXT NOT NULL,
  feature_name TEXT NOT NULL, subclass_name TEXT NOT NULL, uuid TEXT NOT NULL, metric_value BLOB NOT NULL,
  aggregation TEXT, body BLOB NOT NULL, import_id TEXT NOT NULL,
  PRIMARY KEY(model_run_id, data_row_id, metric_name, feature_name, subclass_name));
"""

# Column order = the record order of imports.PredictionRecord / MetricRecord.
_UPSERT_PREDICTION = (
    "INSERT INTO predictions(uuid, data_row_id, name, body, model_run_id, import_id) VALUES (?,?,?,?,?,?) "
    "ON CONFLICT(model_run_id, uuid) DO UPDATE SET data_row_id=excluded.data_row_id, name=excluded.name, "
    "body=excluded.body, import_id=excluded.import_id"
)
_UPSERT_METRIC = (
    "INSERT INTO metrics(data_row_id, metric_name, feature_name, subclass_name, uuid, "
    "metric_value, aggregation, body, model_run_id, import_id) VALUES (?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(model_run_id, data_row_id, metric_name, feature_name, subclass_name) DO UPDATE SET "
    "uuid=excluded.uuid, metric_value=excluded.metric_value, aggregation=excluded.aggregation, "
    "body=excluded.body, import_id=excluded.import_id"
)


class StoreError(RunstreamError):
    """A seed or lookup the store cannot satisfy (bad reference, conflict)."""


def new_id() -> str:
    """A 25-character cuid-like id, as Labelbox ids look."""
    return "c" + secrets.token_hex(12)


def iso_now() -> str:
    """Timestamp in the format the SDK parses (``%Y-%m-%dT%H:%M:%S.%fZ``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class ImportRecord:
    id: str
    model_run_id: str
    name: str
    state: str
    progress: str
    source: str
    file_url: str | None
    fail_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    total_rows: int | None
    failure_rows: int | None
    error_message: str | None


class Store:
    """All persistent state of the local Labelbox API, behind one SQLite connection."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # 16 KiB pages (new files only; an existing file keeps its size): the input and status
        # files are megabyte blobs, and 4 KiB overflow pages made storing them cost more CPU
        # than 16 KiB ones (measured: ~0.4 us/row less on create + finish of an import).
        self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        # run id -> its counts. Pollers (the uploader benchmark, tests, dashboards) ask for counts
        # many times a second, and COUNT(*) walks every row of the run each time (9 ms for 12 runs
        # at 300k rows); the counts only change through this store, which drops a run's entry
        # whenever it writes that run's rows.
        self._counts: dict[str, dict[str, int]] = {}

    def _changed(self, run_id: str) -> None:
        self._counts.pop(run_id, None)

    def close(self) -> None:
        self._db.close()

    def _tx(self, fn: Any, *args: Any) -> Any:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            out = fn(*args)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return out

    # ---- seeding (admin) -------------------------------------------------------------
    def seed_data_rows(self, rows: Sequence[dict[str, Any]]) -> list[str]:
        def run() -> list[str]:
            ids: list[str] = []
            now = iso_now()
            for r in rows:
                rid = r.get("id") or new_id()
                gk = r.get("globalKey")
                if gk is not None:
                    owner = self._db.execute("SELECT id FROM data_rows WHERE global_key=?", (gk,)).fetchone()
                    if owner is not None and owner[0] != rid:
                        raise StoreError(f"globalKey {gk!r} already belongs to data row {owner[0]}")
                self._db.execute(
                    "INSERT INTO data_rows(id, global_key, row_data, external_id, created_at, updated_at) "
                    "VALUES (?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET global_key=excluded.global_key, "
                    "row_data=excluded.row_data, external_id=excluded.external_id, updated_at=excluded.updated_at",
                    (rid, gk, r.get("rowData") or f"https://example.invalid/{rid}", r.get("externalId"), now, now),
                )
                ids.append(rid)
            return ids

        result: list[str] = self._tx(run)
        return result

    def seed_projects(self, projects: Sequence[dict[str, Any]]) -> list[str]:
        def run() -> list[str]:
            ids = []
            for p in projects:
                pid = p.get("id") or new_id()
                self._db.execute(
                    "INSERT INTO projects(id, name) VALUES (?,?) ON CONFLICT(id) DO UPDATE SET name=excluded.name",
                    (pid, p.get("name") or pid),
                )
                ids.append(pid)
            return ids

        result: list[str] = self._tx(run)
        return result

    def seed_labels(self, labels: Sequence[dict[str, Any]]) -> list[str]:
        def run() -> list[str]:
            ids = []
            for lab in labels:
                lid = lab.get("id") or new_id()
                pid, drid = lab.get("projectId"), lab.get("dataRowId")
                if self._db.execute("SELECT 1 FROM projects WHERE id=?", (pid,)).fetchone() is None:
                    raise StoreError(f"label {lid}: projectId {pid!r} is not a seeded project")
                if self._db.execute("SELECT 1 FROM data_rows WHERE id=?", (drid,)).fetchone() is None:
                    raise StoreError(f"label {lid}: dataRowId {drid!r} is not a seeded data row")
                self._db.execute(
                    "INSERT INTO labels(id, project_id, data_row_id) VALUES (?,?,?) ON CONFLICT(id) DO UPDATE "
                    "SET project_id=excluded.project_id, data_row_id=excluded.data_row_id",
                    (lid, pid, drid),
                )
                ids.append(lid)
            return ids

        result: list[str] = self._tx(run)
        return result

    def create_model_run(
        self,
        *,
        name: str,
        model_id: str,
        training_metadata: Any = None,
        run_id: str | None = None,
        created_by: str | None = None,
    ) -> dict[str, Any]:
        rid = run_id or new_id()
        now = iso_now()
        self._db.execute(
            "INSERT INTO model_runs(id, name, model_id, training_metadata, created_by, created_at, updated_at) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET name=excluded.name, model_id=excluded.model_id, "
            "training_metadata=excluded.training_metadata, updated_at=excluded.updated_at",
            (rid, name, model_id, orjson.dumps(training_metadata).decode(), created_by or "local-user", now, now),
        )
        run = self.get_model_run(rid)
        assert run is not None
        return run

    # ---- model runs ------------------------------------------------------------------
    def get_model_run(self, run_id: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT id, name, model_id, training_metadata, created_by, created_at, updated_at "
            "FROM model_runs WHERE id=?",
            (run_id,),
        ).fetchone()
        if row is None:
            return None
        return {
            "id": row[0],
            "name": row[1],
            "modelId": row[2],
            "trainingMetadata": orjson.loads(row[3]) if row[3] else None,
            "createdBy": row[4],
            "createdAt": row[5],
            "updatedAt": row[6],
            "modelAppId": None,
        }

    def _add_to_run(self, run_id: str, pairs: Iterable[tuple[str, str | None]]) -> int:
        """Add (data row, label) pairs to a run; a later label replaces an earlier one."""
        self._changed(run_id)
        cur = self._db.executemany(
            "INSERT INTO model_run_data_rows(id, model_run_id, data_row_id, label_id) VALUES (?,?,?,?) "
            "ON CONFLICT(model_run_id, data_row_id) DO UPDATE SET "
            "label_id=COALESCE(excluded.label_id, model_run_data_rows.label_id)",
            [(new_id(), run_id, dr, label) for dr, label in pairs],
        )
        return cur.rowcount

    def _task(self, kind: str, error: str | None) -> str:
        tid = new_id()
        self._db.execute(
            "INSERT INTO tasks(id, kind, status, error_message, created_at) VALUES (?,?,?,?,?)",
            (tid, kind, "FAILED" if error else "COMPLETE", error, time.time()),
        )
        return tid

    def register_labels(self, run_id: str, label_ids: Sequence[str]) -> str:
        """Label registration runs to completion at once; the task records the outcome."""

        def run() -> str:
            rows = self._fetch_in("SELECT id, data_row_id FROM labels WHERE id IN ({})", label_ids)
            found = {r[0]: r[1] for r in rows}
            missing = [lid for lid in label_ids if lid not in found]
            if missing:
                return self._task("label", f"Labels not found: {', '.join(missing[:20])}")
            self._add_to_run(run_id, [(found[lid], lid) for lid in label_ids])
            return self._task("label", None)

        result: str = self._tx(run)
        return result

    def register_project(self, run_id: str, project_id: str) -> str:
        def run() -> str:
            if self._db.execute("SELECT 1 FROM projects WHERE id=?", (project_id,)).fetchone() is None:
                return self._task("label", f"Project not found: {project_id}")
            rows = self._db.execute(
                "SELECT data_row_id, id FROM labels WHERE project_id=? ORDER BY rowid", (project_id,)
            ).fetchall()
            self._add_to_run(run_id, [(r[0], r[1]) for r in rows])
            return self._task("label", None)

        result: str = self._tx(run)
        return result

    def register_data_rows(
        self, run_id: str, data_row_ids: Sequence[str] | None, global_keys: Sequence[str] | None
    ) -> str:
        def run() -> str:
            ids = list(data_row_ids or [])
            keys = list(global_keys or [])
            if not ids and not keys:
                return self._task("data_row", "Must provide data row ids or global keys")
            found_ids = {r[0] for r in self._fetch_in("SELECT id FROM data_rows WHERE id IN ({})", ids)}
            gk_rows = self._fetch_in("SELECT global_key, id FROM data_rows WHERE global_key IN ({})", keys)
            gk_map = {r[0]: r[1] for r in gk_rows}
            missing = [f"data row id {i}" for i in ids if i not in found_ids]
            missing += [f"global key {k}" for k in keys if k not in gk_map]
            if missing:
                return self._task("data_row", f"Data rows not found: {', '.join(missing[:20])}")
            self._add_to_run(run_id, [(i, None) for i in ids] + [(gk_map[k], None) for k in keys])
            return self._task("data_row", None)

        result: str = self._tx(run)
        return result

    def assign_split(self, run_id: str, assignments: Sequence[dict[str, Any]]) -> str:
        """Set the data split of the run's data rows (by id or global key); a data row that is not in
        the run fails the whole task and changes nothing."""

        def run() -> str:
            ids, gks = self.run_members(run_id)
            updates: list[tuple[str, str, str]] = []
            missing: list[str] = []
            for a in assignments:
                row_ids = list(a.get("dataRowIds") or [])
                keys = list(a.get("globalKeys") or [])
                if not row_ids and not keys:
                    return self._task("split", "Each assignment needs dataRowIds or globalKeys")
                missing += [f"data row id {i}" for i in row_ids if i not in ids]
                missing += [f"global key {k}" for k in keys if k not in gks]
                targets = [i for i in row_ids if i in ids] + [gks[k] for k in keys if k in gks]
                updates += [(a["split"], run_id, dr) for dr in targets]
            if missing:
                return self._task("split", f"Data rows not in model run {run_id}: {', '.join(missing[:20])}")
            self._db.executemany(
                "UPDATE model_run_data_rows SET data_split=? WHERE model_run_id=? AND data_row_id=?", updates
            )
            return self._task("split", None)

        result: str = self._tx(run)
        return result

    def update_training_metadata(self, run_id: str, config: dict[str, Any] | None, reset: bool) -> dict[str, Any]:
        """Merge ``config`` into the run's training metadata, or clear it (``reset``); the run after."""

        def run() -> None:
            current = self.get_model_run(run_id)
            assert current is not None
            merged = None if reset else {**(current["trainingMetadata"] or {}), **(config or {})}
            self._db.execute(
                "UPDATE model_runs SET training_metadata=?, updated_at=? WHERE id=?",
                (orjson.dumps(merged).decode(), iso_now(), run_id),
            )

        self._tx(run)
        out = self.get_model_run(run_id)
        assert out is not None
        return out

    def delete_run_data_rows(self, run_id: str, data_row_ids: Sequence[str]) -> None:
        """Take data rows out of a run, with their predictions and metrics in it; unknown ids are ignored."""

        def run() -> None:
            self._changed(run_id)
            for table in ("model_run_data_rows", "predictions", "metrics"):
                for i in range(0, len(data_row_ids), 500):
                    chunk = list(data_row_ids[i : i + 500])
                    self._db.execute(
                        f"DELETE FROM {table} WHERE model_run_id=? AND data_row_id IN ({','.join('?' * len(chunk))})",
                        [run_id, *chunk],
                    )

        self._tx(run)

    def delete_model_runs(self, run_ids: Sequence[str]) -> None:
        """Delete runs with everything in them (data row membership, predictions, metrics, imports and
        their files); the data rows, projects and labels themselves stay."""

        def run() -> None:
            for run_id in run_ids:
                self._changed(run_id)
                self._db.execute(
                    "DELETE FROM import_files WHERE import_id IN (SELECT id FROM imports WHERE model_run_id=?)",
                    (run_id,),
                )
                for table in ("model_run_data_rows", "predictions", "metrics", "imports"):
                    self._db.execute(f"DELETE FROM {table} WHERE model_run_id=?", (run_id,))
                self._db.execute("DELETE FROM model_runs WHERE id=?", (run_id,))

        self._tx(run)

    def _fetch_in(self, sql: str, values: Sequence[str]) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        values = list(values)
        for i in range(0, len(values), 500):
            chunk = values[i : i + 500]
            out += self._db.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall()
        return out

    def get_task(self, task_id: str, kind: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT status, error_message FROM tasks WHERE id=? AND kind=?", (task_id, kind)
        ).fetchone()
        return None if row is None else {"status": row[0], "errorMessage": row[1]}

    def run_members(self, run_id: str) -> tuple[set[str], dict[str, str]]:
        """Data row ids in the run, and global key -> id for those that have one."""
        ids: set[str] = set()
        gks: dict[str, str] = {}
        for drid, gk in self._db.execute(
            "SELECT m.data_row_id, d.global_key FROM model_run_data_rows m "
            "LEFT JOIN data_rows d ON d.id = m.data_row_id WHERE m.model_run_id=?",
            (run_id,),
        ):
            ids.add(drid)
            if gk is not None:
                gks[gk] = drid
        return ids, gks

    def run_data_rows_page(self, run_id: str, after_seq: int, first: int) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT m.seq, m.id, m.label_id, m.data_split, d.id, d.global_key, d.row_data, d.external_id, "
            "d.created_at, d.updated_at FROM model_run_data_rows m LEFT JOIN data_rows d ON d.id = m.data_row_id "
            "WHERE m.model_run_id=? AND m.seq > ? ORDER BY m.seq LIMIT ?",
            (run_id, after_seq, first),
        ).fetchall()
        return [
            {
                "seq": r[0],
                "id": r[1],
                "labelId": r[2],
                "dataSplit": r[3],
                "modelRunId": run_id,
                "dataRow": {
                    "id": r[4],
                    "globalKey": r[5],
                    "rowData": r[6],
                    "externalId": r[7],
                    "createdAt": r[8],
                    "updatedAt": r[9],
                    "mediaAttributes": {},
                    "customMetadata": [],
                    "metadataFields": [],
                },
            }
            for r in rows
        ]

    # ---- imports ---------------------------------------------------------------------
    def create_import(
        self, run_id: str, name: str, source: str, file_url: str | None, payload: bytes | None, fail: bool
    ) -> ImportRecord | None:
        """Create the import record (and store the input file); None if the name is taken."""

        def run() -> ImportRecord | None:
            if (
                self._db.execute(
                    "SELECT 1 FROM imports WHERE model_run_id=? AND name=?", (run_id, name)
                ).fetchone()
                is not None
            ):
                return None
            iid = new_id()
            self._changed(run_id)
            self._db.execute(
                "INSERT INTO imports(id, model_run_id, name, state, progress, source, file_url, fail_requested, "
                "created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (iid, run_id, name, "RUNNING", "0%", source, file_url, int(fail), time.time()),
            )
            if payload is not None:
                self._db.execute(
                    "INSERT INTO import_files(import_id, kind, content) VALUES (?,?,?)", (iid, "input", payload)
                )
            return self.get_import(iid)

        result: ImportRecord | None = self._tx(run)
        return result

    def get_import(self, import_id: str) -> ImportRecord | None:
        row = self._db.execute(
            "SELECT id, model_run_id, name, state, progress, source, file_url, fail_requested, created_at, "
            "started_at, finished_at, total_rows, failure_rows, error_message FROM imports WHERE id=?",
            (import_id,),
        ).fetchone()
        if row is None:
            return None
        return ImportRecord(
            id=row[0], model_run_id=row[1], name=row[2], state=row[3], progress=row[4], source=row[5],
            file_url=row[6], fail_requested=bool(row[7]), created_at=row[8], started_at=row[9],
            finished_at=row[10], total_rows=row[11], failure_rows=row[12], error_message=row[13],
        )

    def find_import(self, run_id: str, name: str) -> ImportRecord | None:
        row = self._db.execute(
            "SELECT id FROM imports WHERE model_run_id=? AND name=?", (run_id, name)
        ).fetchone()
        return None if row is None else self.get_import(row[0])

    def running_imports(self) -> list[ImportRecord]:
        ids = [r[0] for r in self._db.execute("SELECT id FROM imports WHERE state='RUNNING' ORDER BY created_at")]
        return [rec for i in ids if (rec := self.get_import(i)) is not None]

    def put_input(self, import_id: str, payload: bytes) -> None:
        self._db.execute(
            "INSERT INTO import_files(import_id, kind, content) VALUES (?,?,?) "
            "ON CONFLICT(import_id, kind) DO UPDATE SET content=excluded.content",
            (import_id, "input", payload),
        )

    def get_file(self, import_id: str, kind: str) -> bytes | None:
        row = self._db.execute(
            "SELECT content FROM import_files WHERE import_id=? AND kind=?", (import_id, kind)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def mark_started(self, import_id: str) -> None:
        self._db.execute("UPDATE imports SET started_at=? WHERE id=?", (time.time(), import_id))

    def fail_import(self, import_id: str, message: str) -> None:
        self._db.execute(
            "UPDATE imports SET state='FAILED', progress='100%', finished_at=?, error_message=? WHERE id=?",
            (time.time(), message, import_id),
        )

    def finish_import(self, rec: ImportRecord, plan: ImportPlan) -> None:
        """Persist an import's rows, status files and FINISHED state in one transaction."""
        iid = rec.id
        status = plan.status_ndjson()
        errors = plan.error_ndjson()

        # The plan's records are the statement parameters (planned for this import). Rows repeating
        # a key (a prediction uuid, a metric's upsert key) are upserted in input order, so the last
        # one wins; that is rare, and de-duplicating up front cost more than it saved.
        def run() -> None:
            self._changed(rec.model_run_id)
            self._db.executemany(_UPSERT_PREDICTION, plan.predictions)
            self._db.executemany(_UPSERT_METRIC, plan.metrics)
            self._db.executemany(
                "INSERT INTO import_files(import_id, kind, content) VALUES (?,?,?) "
                "ON CONFLICT(import_id, kind) DO UPDATE SET content=excluded.content",
                [(iid, "status", status), (iid, "errors", errors)],
            )
            self._db.execute(
                "UPDATE imports SET state='FINISHED', progress='100%', finished_at=?, total_rows=?, "
                "failure_rows=? WHERE id=?",
                (time.time(), plan.total, plan.failures, iid),
            )

        self._tx(run)

    # ---- read-back (admin) -----------------------------------------------------------
    def predictions(self, run_id: str) -> list[dict[str, Any]]:
        out = []
        for uuid, drid, body in self._db.execute(
            "SELECT uuid, data_row_id, body FROM predictions WHERE model_run_id=? ORDER BY uuid", (run_id,)
        ):
            row = orjson.loads(body)
            row["uuid"] = uuid
            out.append({"uuid": uuid, "dataRowId": drid, "row": row})
        return out

    def metrics(self, run_id: str) -> list[dict[str, Any]]:
        out = []
        for drid, mname, feat, sub, uuid, value, agg in self._db.execute(
            "SELECT data_row_id, metric_name, feature_name, subclass_name, uuid, metric_value, aggregation "
            "FROM metrics WHERE model_run_id=? ORDER BY data_row_id, metric_name, feature_name, subclass_name",
            (run_id,),
        ):
            out.append(
                {
                    "dataRowId": drid,
                    "metricName": mname or None,
                    "featureName": feat or None,
                    "subclassName": sub or None,
                    "uuid": uuid,
                    "metricValue": orjson.loads(value),
                    "aggregation": agg,
                }
            )
        return out

    def run_data_rows(self, run_id: str) -> list[dict[str, Any]]:
        return [
            {"dataRowId": r[0], "labelId": r[1], "globalKey": r[2]}
            for r in self._db.execute(
                "SELECT m.data_row_id, m.label_id, d.global_key FROM model_run_data_rows m "
                "LEFT JOIN data_rows d ON d.id=m.data_row_id WHERE m.model_run_id=? ORDER BY m.seq",
                (run_id,),
            )
        ]

    def counts(self, run_id: str) -> dict[str, int]:
        cached = self._counts.get(run_id)
        if cached is None:
            cached = self._counts[run_id] = self._count(run_id)
        return dict(cached)

    def _count(self, run_id: str) -> dict[str, int]:
        def one(sql: str) -> int:
            return int(self._db.execute(sql, (run_id,)).fetchone()[0])

        return {
            "dataRows": one("SELECT COUNT(*) FROM model_run_data_rows WHERE model_run_id=?"),
            "predictions": one("SELECT COUNT(*) FROM predictions WHERE model_run_id=?"),
            "metrics": one("SELECT COUNT(*) FROM metrics WHERE model_run_id=?"),
            "imports": one("SELECT COUNT(*) FROM imports WHERE model_run_id=?"),
        }

    def imports_of(self, run_id: str) -> list[ImportRecord]:
        ids = [
            r[0]
            for r in self._db.execute(
                "SELECT id FROM imports WHERE model_run_id=? ORDER BY created_at", (run_id,)
            )
        ]
        return [rec for i in ids if (rec := self.get_import(i)) is not None]

    def integrity_ok(self) -> bool:
        return bool(self._db.execute("PRAGMA quick_check").fetchone()[0] == "ok")
