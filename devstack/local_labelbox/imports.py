"""Turn one uploaded NDJSON prediction import into rows to persist and per-row statuses.

Pure (no I/O): ``plan_import`` takes the bytes, the import's ids, the model run's membership
(data row ids and their global keys) and the row parser, and returns what the store must upsert
(as the statement parameters themselves) plus the status file rows. Row validation itself is
``service.events.parse_ndjson_row`` (the same rules the uploader applies), so the local API and
the producer side never drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

import orjson

from service.errors import EventValidationError

# Labelbox's ANNOTATION_PER_LABEL_LIMIT: annotations per data row per annotation name.
ANNOTATION_PER_DATA_ROW_LIMIT = 5000

ParseRow = Callable[..., Any]

# A uuid as Labelbox accepts it: the canonical 8-4-4-4-12 hex form (any version, either case).
_is_uuid = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z").match

# Records are the store's statement parameters as they are, so persisting them builds nothing per row.
# (uuid, data_row_id, name, body, model_run_id, import_id)
PredictionRecord = tuple[str, str, str | None, bytes, str, str]
# (data_row_id, metric_name, feature_name, subclass_name, uuid, metric_value, aggregation, body,
#  model_run_id, import_id)
MetricRecord = tuple[str, str, str, str, str, bytes, str | None, bytes, str, str]


@dataclass
class ImportPlan:
    """What to persist. Status rows are kept serialized (one NDJSON line per input row, in order):
    that is how they are stored and served, and it spares a dict per row on the import path."""

    predictions: list[PredictionRecord] = field(default_factory=list)
    metrics: list[MetricRecord] = field(default_factory=list)
    status_lines: list[bytes] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)  # indices into status_lines, ascending
    failures: int = 0

    @property
    def total(self) -> int:
        return len(self.status_lines)

    @property
    def statuses(self) -> list[dict[str, Any]]:
        """The status rows as dicts (for inspection; the import path never builds them)."""
        return [orjson.loads(line) for line in self.status_lines]

    def status_ndjson(self) -> bytes:
        return b"\n".join(self.status_lines)

    def error_ndjson(self) -> bytes:
        lines = self.status_lines
        return b"\n".join([lines[i] for i in self.failed])


def failure(uuid: Any, data_row: Any, name: str, message: str) -> dict[str, Any]:
    """A FAILURE status row, shaped like Labelbox's (PROTOCOL §2f)."""
    return {
        "uuid": uuid if isinstance(uuid, str) else None,
        "dataRow": data_row if isinstance(data_row, dict) else None,
        "status": "FAILURE",
        "errors": [{"name": name, "message": message}],
    }


def _enum_str(value: Any) -> str | None:
    if value is None:
        return None
    inner = getattr(value, "value", value)
    return str(inner)


def plan_import(
    payload: bytes,
    *,
    model_run_id: str,
    import_id: str,
    run_data_row_ids: Set[str],
    run_global_keys: Mapping[str, str],
    parse_row: ParseRow,
) -> ImportPlan:
    """Validate every line and decide SUCCESS/FAILURE per row.

    A row fails when: its line is not a JSON object; its ``uuid`` is not a UUID, or repeats the
    ``uuid`` of an earlier row of this import (the earlier row stands); ``parse_row`` rejects it; its data row
    (by id or global key) is not in the model run; it puts ``customMetrics`` on a raster
    mask; or its (data row, annotation name) group has more than 5,000 rows in this import
    (every row of such a group fails, as Labelbox rejects the whole group).
    """
    plan = ImportPlan()
    lines = plan.status_lines
    failed = plan.failed
    preds = plan.predictions
    # Metric upsert key (data row, metric, feature, subclass) -> its record: a key repeated within
    # the import keeps its last row, as upserting every row in order would leave it, at one write
    # per key (a conflicting upsert costs SQLite more than this dict costs per row).
    metrics: dict[tuple[str, str, str, str], MetricRecord] = {}
    # (data row id, name) -> indices into ``lines`` of its prediction rows, for the limit.
    groups: dict[tuple[str, str], list[int]] = {}
    # data row id -> its SUCCESS-line middle part, serialized once per data row.
    dr_json: dict[str, bytes] = {}
    # uuids given by earlier rows of this import: Labelbox fails a repeat instead of upserting it.
    seen_uuids: set[str] = set()
    loads = orjson.loads
    dumps = orjson.dumps

    def fail(status: dict[str, Any]) -> None:
        failed.append(len(lines))
        lines.append(dumps(status))

    for line in payload.split(b"\n"):
        if not line or line.isspace():
            continue
        try:
            raw = loads(line)
        except orjson.JSONDecodeError as exc:
            fail(failure(None, None, "InvalidJson", f"line is not valid JSON: {exc}"))
            continue
        if type(raw) is not dict:
            fail(failure(None, None, "InvalidJson", "line is not a JSON object"))
            continue
        given_uuid = raw.get("uuid")
        if type(given_uuid) is str:
            if not _is_uuid(given_uuid):
                fail(failure(given_uuid, raw.get("dataRow"), "InvalidUuid", f"uuid {given_uuid!r} is not a UUID"))
                continue
            if given_uuid in seen_uuids:
                fail(
                    failure(
                        given_uuid,
                        raw.get("dataRow"),
                        "DuplicateUuid",
                        f"uuid {given_uuid} appears more than once in this import; only its first row is imported",
                    )
                )
                continue
            seen_uuids.add(given_uuid)
        try:
            parsed = parse_row(raw, model_run_id=model_run_id)
        except EventValidationError as exc:
            fail(failure(raw.get("uuid"), raw.get("dataRow"), "ValidationError", str(exc)))
            continue
        ref = parsed.data_row
        if ref.id is not None:
            dr_id: str | None = ref.id if ref.id in run_data_row_ids else None
        else:
            dr_id = run_global_keys.get(ref.global_key) if ref.global_key is not None else None
        if dr_id is None:
            if ref.id is not None:
                shown: dict[str, Any] = {"id": ref.id}
                what = f"Data row {ref.id}"
            else:
                shown = {"globalKey": ref.global_key}
                what = f"Data row with global key {ref.global_key}"
            fail(
                failure(
                    parsed.uuid, shown, "DataRowNotInModelRun", f"{what} is not in model run {model_run_id}; "
                    "register it first"
                )
            )
            continue
        if "metricValue" in raw:
            m_name = parsed.metric_name or ""
            f_name = parsed.feature_name or ""
            s_name = parsed.subclass_name or ""
            metrics[(dr_id, m_name, f_name, s_name)] = (
                dr_id,
                m_name,
                f_name,
                s_name,
                parsed.uuid,
                dumps(raw["metricValue"]),
                _enum_str(parsed.aggregation),
                line,
                model_run_id,
                import_id,
            )
        else:
            if parsed.is_mask and parsed.custom_metric_leaves():
                fail(
                    failure(
                        parsed.uuid,
                        {"id": dr_id},
                        "CustomMetricsNotSupported",
                        "customMetrics are not supported on raster segmentation (mask) annotations",
                    )
                )
                continue
            name = raw.get("name")
            if isinstance(name, str) and name:
                key = (dr_id, name)
                idx = groups.get(key)
                if idx is None:
                    groups[key] = [len(lines)]
                else:
                    idx.append(len(lines))
            else:
                name = raw.get("schemaId")
            preds.append((parsed.uuid, dr_id, name, line, model_run_id, import_id))
        # Same bytes as orjson.dumps({"uuid": uuid, "dataRow": {"id": dr_id}, "status": "SUCCESS"}).
        middle = dr_json.get(dr_id)
        if middle is None:
            middle = dr_json[dr_id] = b',"dataRow":{"id":' + dumps(dr_id) + b'},"status":"SUCCESS"}'
        lines.append(b'{"uuid":' + dumps(parsed.uuid) + middle)

    over = {k: v for k, v in groups.items() if len(v) > ANNOTATION_PER_DATA_ROW_LIMIT}
    if over:
        for (dr_id, name), indices in over.items():
            message = (
                f"Data row {dr_id} has {len(indices)} annotations named {name!r} in this import; "
                f"the limit is {ANNOTATION_PER_DATA_ROW_LIMIT} per data row per name"
            )
            for i in indices:
                uuid = loads(lines[i])["uuid"]
                lines[i] = dumps(failure(uuid, {"id": dr_id}, "AnnotationLimitExceeded", message))
        failed.extend(i for indices in over.values() for i in indices)
        failed.sort()
        plan.predictions = [p for p in preds if (p[1], p[2]) not in over]
    plan.metrics = list(metrics.values())
    plan.failures = len(failed)
    return plan
