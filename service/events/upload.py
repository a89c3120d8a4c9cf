"""``parse_upload``: the uploader's view of an event — uuids, data row keys and the NDJSON bytes to import."""

from __future__ import annotations

import orjson

from service.events.constants import EventKind
from service.events.models import LabelEvent, MetricEvent, PredictionEvent, UploadRows
from service.events.ndjson import is_normal, prediction_body
from service.events.parse import parse_event
from service.events.uuids import prediction_prefix, prediction_uuid

_dumps = orjson.dumps
_new_tuple = tuple.__new__


def parse_upload(kind: EventKind, raw: bytes | None, *, max_bytes: int) -> UploadRows | LabelEvent:
    """``parse_event`` for the uploader: the same validation, uuids and NDJSON bytes as
    ``orjson.dumps(row.to_ndjson())`` per row, without keeping the row objects. A label event is
    returned as is.
    """
    ev = parse_event(kind, raw, max_bytes=max_bytes)
    rows: list[tuple[str, str]] = []
    lines: list[bytes] = []
    if type(ev) is PredictionEvent:
        prefix = prediction_prefix(ev.model_run_id)
        for p in ev.predictions:
            ref = p.data_row
            body = p.raw
            if not is_normal(body, ref.to_ndjson(), p.confidence):  # else the row is sent as produced
                body = prediction_body(body, ref.to_ndjson(), p.confidence)
            row_uuid = p.given_uuid
            if row_uuid is None:
                row_uuid = prediction_uuid(prefix, body)
            # == orjson.dumps({"uuid": row_uuid, **body}): a uuid needs no escaping and ``body`` always
            # holds dataRow; the concatenation is also an exact-size copy (orjson's own output keeps
            # ~1 KiB of spare capacity, which a batch waiting to be sent would hold on to).
            lines.append(b'{"uuid":"' + row_uuid.encode() + b'",' + _dumps(body)[1:])
            rows.append((row_uuid, ref.key()))
        payload = b"\n".join(lines) if len(lines) != 1 else lines[0]
    elif type(ev) is MetricEvent:
        for m in ev.metrics:
            rows.append((m.uuid, m.data_row.key()))
            lines.append(_dumps(m.to_ndjson()))
        payload = b"\n".join(lines) if len(lines) != 1 else memoryview(lines[0]).tobytes()
    else:
        assert isinstance(ev, LabelEvent)
        return ev
    return _new_tuple(UploadRows, (ev.model_run_id, rows, payload))  # NamedTuple.__new__ is Python-level
