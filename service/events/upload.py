"""``parse_upload``: the uploader's view of an event — uuids, data row keys and the NDJSON bytes to import."""

from __future__ import annotations

import orjson

from service.events.constants import EventKind
from service.events.models import LabelEvent, MetricEvent, PredictionEvent, UploadRows
from service.events.ndjson import NOT_AS_IS, is_normal, prediction_body
from service.events.parse import parse_event
from service.events.uuids import prediction_hasher, uuid5_text

_dumps = orjson.dumps
_SORT = orjson.OPT_SORT_KEYS
_new_tuple = tuple.__new__
_FLOAT = float


def parse_upload(kind: EventKind, raw: bytes | None, *, max_bytes: int) -> UploadRows | LabelEvent:
    """``parse_event`` for the uploader: the same validation, uuids and NDJSON bytes as
    ``orjson.dumps(row.to_ndjson())`` per row, without keeping the row objects. A label event is
    returned as is.
    """
    ev = parse_event(kind, raw, max_bytes=max_bytes)
    rows: list[tuple[str, str]] = []
    if type(ev) is PredictionEvent:
        hasher = prediction_hasher(ev.model_run_id)
        lines: list[bytes] = []
        for p in ev.predictions:
            ref = p.data_row
            body = p.raw
            # The common row is sent as produced: is_normal's test for its usual shape, inline (this runs
            # per row); any other row takes the full test and, failing it, the rewrite.
            cms = body.get("customMetrics")
            if not (
                body.keys().isdisjoint(NOT_AS_IS)  # so "dataRow" is the row's data row
                and (drid := ref.id) is not None
                and len(drw := body["dataRow"]) == 1
                and drw.get("id") == drid
                and type(body.get("confidence")) is _FLOAT
                and body.get("name", 0) is not None
                and "schemaId" not in body
                and cms is not None
                and len(cms) == 1
                and type(cms[0]["value"]) is _FLOAT
                and next(iter(cms[0])) == "name"
            ) and not is_normal(body, dr := ref.to_ndjson(), p.confidence):
                body = prediction_body(body, dr, p.confidence)
            row_uuid = p.given_uuid
            if row_uuid is None:
                h = hasher.copy()
                h.update(_dumps(body, option=_SORT))
                row_uuid = uuid5_text(h)
            # == orjson.dumps({"uuid": row_uuid, **body}): a uuid needs no escaping and ``body`` always
            # holds dataRow; the concatenation is also an exact-size copy (orjson's own output keeps
            # ~1 KiB of spare capacity, which a batch waiting to be sent would hold on to).
            lines.append(b'{"uuid":"' + row_uuid.encode() + b'",' + _dumps(body)[1:])
            rows.append((row_uuid, ref.key()))
        payload = b"\n".join(lines) if len(lines) != 1 else lines[0]
    elif type(ev) is MetricEvent:
        lines = []
        for m in ev.metrics:
            rows.append((m.uuid, m.data_row.key()))
            lines.append(_dumps(m.to_ndjson()))
        payload = b"\n".join(lines) if len(lines) != 1 else memoryview(lines[0]).tobytes()
    else:
        assert isinstance(ev, LabelEvent)
        return ev
    return _new_tuple(UploadRows, (ev.model_run_id, rows, payload))  # NamedTuple.__new__ is Python-level
