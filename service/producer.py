"""Producer client for inference systems: validated, batched, keyed events into runstream's topics.

Why a client at all: an event the service would dead-letter is better rejected in the caller's
process, at once, with the same ``EventValidationError`` (same field path, same reason) — so each
event is built, serialized and run through ``service.events.parse_event`` before it is sent.
Events are keyed by the model run id (one run stays on one partition, so its order holds), and the
Kafka producer is idempotent (``enable_idempotence=True``, ``acks=all``): a retried send never
duplicates a message.

The pure part (``build_row_events`` / ``build_label_events``) does no I/O and is unit-tested; the
``RunstreamProducer`` shell only sends the bytes it returns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import orjson

from service.config import Settings
from service.errors import ConfigError, EventValidationError, MessageTooLargeError, RunstreamError
from service.events import EventKind, parse_event
from service.kafka import KafkaEndpoint, make_producer, start_client

__all__ = [
    "DEFAULT_MAX_ROWS_PER_EVENT",
    "ProducerError",
    "RunstreamProducer",
    "build_label_events",
    "build_row_events",
]

DEFAULT_MAX_ROWS_PER_EVENT = 500
# Ids per label event: keeps an event of long ids well under the default 1 MiB message limit.
MAX_IDS_PER_LABEL_EVENT = 10_000

RowKind = Literal["prediction", "metric"]
LabelSelector = Literal["label_ids", "project_id", "data_row_ids", "global_keys"]

_LIST_FIELD: dict[RowKind, str] = {"prediction": "predictions", "metric": "metrics"}
_INDEXED = re.compile(r"^(predictions|metrics|label_ids|data_row_ids|global_keys)\[(\d+)\]")


class ProducerError(RunstreamError):
    """Kafka did not accept an event (after the producer's own retries)."""


def _check_finite(value: Any, path: str) -> None:
    """orjson writes NaN/inf as ``null``, which would silently change the data: reject them first."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EventValidationError(path, f"must be a finite number, got {value}")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _check_finite(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{path}[{i}]")


def _renumber(exc: EventValidationError, offset: int) -> EventValidationError:
    """Point the error at the caller's row index, not at the index inside the chunk we built."""
    m = _INDEXED.match(exc.field)
    if not m or offset == 0 or type(exc) is MessageTooLargeError:
        return exc
    field = f"{m.group(1)}[{int(m.group(2)) + offset}]{exc.field[m.end() :]}"
    return type(exc)(field, exc.reason)


def _dumps(obj: Any, path: str) -> bytes:
    try:
        return orjson.dumps(obj)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise EventValidationError(path, f"cannot be serialized as JSON: {exc}") from None


def _validated(kind: EventKind, raw: bytes, offset: int) -> None:
    try:
        parse_event(kind, raw, max_bytes=len(raw) + 1)  # size is checked by the caller, who can split
    except EventValidationError as exc:
        raise _renumber(exc, offset) from None


def _split(
    kind: EventKind,
    make: Any,
    items: Sequence[Any],
    offset: int,
    max_bytes: int,
    out: list[bytes],
) -> None:
    """Serialize ``items`` as one event; halve it while it is over ``max_bytes``."""
    raw = _dumps(make(items), "")
    if len(raw) > max_bytes:
        if len(items) == 1:
            raise MessageTooLargeError(len(raw), max_bytes)
        half = len(items) // 2
        _split(kind, make, items[:half], offset, max_bytes, out)
        _split(kind, make, items[half:], offset + half, max_bytes, out)
        return
    _validated(kind, raw, offset)
    out.append(raw)


def build_row_events(
    kind: RowKind,
    model_run_id: str,
    rows: Iterable[Mapping[str, Any]],
    *,
    max_rows: int = DEFAULT_MAX_ROWS_PER_EVENT,
    max_bytes: int = 1_048_576,
) -> list[bytes]:
    """Validated event values for ``rows``, at most ``max_rows`` rows and ``max_bytes`` bytes each.

    Raises the ``EventValidationError`` the service would DLQ the event for, with the field path
    numbered as in ``rows`` (``predictions[1203].dataRow``); nothing is returned if any row is bad.
    """
    if max_rows < 1:
        raise ConfigError("max_rows must be at least 1")
    field = _LIST_FIELD[kind]
    items = list(rows)
    if not items:
        return []
    for i, row in enumerate(items):
        _check_finite(row, f"{field}[{i}]")

    def make(chunk: Sequence[Any]) -> dict[str, Any]:
        return {"model_run_id": model_run_id, field: list(chunk)}

    out: list[bytes] = []
    for start in range(0, len(items), max_rows):
        _split(kind, make, items[start : start + max_rows], start, max_bytes, out)
    return out


def build_label_events(
    model_run_id: str,
    *,
    label_ids: Sequence[str] | None = None,
    project_id: str | None = None,
    data_row_ids: Sequence[str] | None = None,
    global_keys: Sequence[str] | None = None,
    max_bytes: int = 1_048_576,
) -> list[bytes]:
    """Validated label events; long id lists are split (registration is an upsert, so splitting is safe)."""
    selectors: tuple[tuple[LabelSelector, Any], ...] = (
        ("label_ids", label_ids),
        ("project_id", project_id),
        ("data_row_ids", data_row_ids),
        ("global_keys", global_keys),
    )
    given = [(name, value) for name, value in selectors if value is not None]
    if len(given) != 1:
        # Same rule, same message shape as the service: build the event and let parse_event say it.
        raw = _dumps({"model_run_id": model_run_id, **dict(given)}, "")
        _validated("label", raw, 0)
        raise EventValidationError("label_ids", "give exactly one of label_ids, project_id, data_row_ids, global_keys")
    name, value = given[0]
    out: list[bytes] = []
    if name == "project_id":
        raw = _dumps({"model_run_id": model_run_id, "project_id": value}, "project_id")
        _validated("label", raw, 0)
        return [raw]
    if isinstance(value, str):
        raise EventValidationError(name, "must be a list of strings, got a single string")
    ids = list(value)
    if not ids:
        _validated("label", _dumps({"model_run_id": model_run_id, name: ids}, name), 0)

    def make(chunk: Sequence[Any]) -> dict[str, Any]:
        return {"model_run_id": model_run_id, name: list(chunk)}

    for start in range(0, len(ids), MAX_IDS_PER_LABEL_EVENT):
        _split("label", make, ids[start : start + MAX_IDS_PER_LABEL_EVENT], start, max_bytes, out)
    return out


class RunstreamProducer:
    """``async with RunstreamProducer(settings) as p: await p.emit_predictions(run, rows)``.

    ``emit_*`` validate and enqueue; delivery happens in the background (linger batches messages)
    and ``flush()`` — also called on leaving the ``async with`` block without an error — waits until
    Kafka acknowledged everything and raises ``ProducerError`` if anything was not delivered.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        max_rows_per_event: int = DEFAULT_MAX_ROWS_PER_EVENT,
        linger_ms: int = 10,
        compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None,
        client_id: str = "runstream-producer",
    ) -> None:
        self._endpoint = KafkaEndpoint.from_settings(settings, hint="the producer needs a Kafka broker")
        if max_rows_per_event < 1:
            raise ConfigError("max_rows_per_event must be at least 1")
        self._settings = settings
        self._max_rows = max_rows_per_event
        self._max_bytes = settings.max_message_bytes
        self._topics: dict[EventKind, str] = {
            "prediction": settings.topic_predictions,
            "metric": settings.topic_metrics,
            "label": settings.topic_labels,
        }
        self._producer = make_producer(
            self._endpoint,
            client_id=client_id,
            linger_ms=linger_ms,
            compression_type=compression_type,
            # room for the largest event the service accepts, plus record overhead
            max_request_size=max(1_048_576, settings.max_message_bytes + 4096),
        )
        self._pending: list[Any] = []
        self._started = False
        self.events_sent = 0

    async def start(self) -> None:
        await start_client(self._producer, self._endpoint, "runstream producer")
        self._started = True

    async def stop(self) -> None:
        """Flush what is buffered (best effort) and close the connections."""
        if self._started:
            self._started = False
            await self._producer.stop()

    async def __aenter__(self) -> RunstreamProducer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                await self.flush()
        finally:
            await self.stop()

    async def emit_predictions(self, model_run_id: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Labelbox NDJSON prediction rows (dicts) for one model run; returns the number of events."""
        events = build_row_events(
            "prediction", model_run_id, rows, max_rows=self._max_rows, max_bytes=self._max_bytes
        )
        await self._send_all("prediction", model_run_id, events)
        return len(events)

    async def emit_metrics(self, model_run_id: str, metrics: Iterable[Mapping[str, Any]]) -> int:
        """Scalar / confusion-matrix metric rows (snake_case or NDJSON camelCase); returns the events."""
        events = build_row_events("metric", model_run_id, metrics, max_rows=self._max_rows, max_bytes=self._max_bytes)
        await self._send_all("metric", model_run_id, events)
        return len(events)

    async def emit_labels(self, model_run_id: str, labels: Iterable[Any]) -> int:
        """Labelbox SDK ``Label`` objects (annotations with ``custom_metrics``, ``ScalarMetric``,
        ``ConfusionMatrixMetric``) for one model run, serialized by the SDK's ``NDJsonConverter``;
        returns the number of events. Needs the ``runstream[labelbox]`` extra (``MissingExtraError``
        names it otherwise). Error paths name the label: ``labels[3].metrics[0].metricValue``."""
        from service.sdk_labels import build_label_row_events

        events = build_label_row_events(model_run_id, labels, max_rows=self._max_rows, max_bytes=self._max_bytes)
        for kind, values in events.items():
            await self._send_all(kind, model_run_id, values)
        return sum(len(v) for v in events.values())

    async def upsert_labels(
        self, model_run_id: str, *, label_ids: Sequence[str] | None = None, project_id: str | None = None
    ) -> int:
        """Like ``ModelRun.upsert_labels``: exactly one of ``label_ids`` / ``project_id``."""
        if (label_ids is None) == (project_id is None):
            raise EventValidationError("label_ids", "give exactly one of label_ids or project_id")
        events = build_label_events(
            model_run_id, label_ids=label_ids, project_id=project_id, max_bytes=self._max_bytes
        )
        await self._send_all("label", model_run_id, events)
        return len(events)

    async def upsert_data_rows(
        self,
        model_run_id: str,
        *,
        data_row_ids: Sequence[str] | None = None,
        global_keys: Sequence[str] | None = None,
    ) -> int:
        """Like ``ModelRun.upsert_data_rows``: exactly one of ``data_row_ids`` / ``global_keys``."""
        if (data_row_ids is None) == (global_keys is None):
            raise EventValidationError("data_row_ids", "give exactly one of data_row_ids or global_keys")
        events = build_label_events(
            model_run_id, data_row_ids=data_row_ids, global_keys=global_keys, max_bytes=self._max_bytes
        )
        await self._send_all("label", model_run_id, events)
        return len(events)

    async def flush(self) -> None:
        """Wait for every enqueued event to be acknowledged; raise ``ProducerError`` on a failed one."""
        if not self._started:
            return
        await self._producer.flush()
        pending, self._pending = self._pending, []
        self._raise_failures(pending)

    async def _send_all(self, kind: EventKind, model_run_id: str, events: list[bytes]) -> None:
        if not self._started:
            raise ProducerError("the producer is not started; use 'async with RunstreamProducer(...)'")
        key = model_run_id.encode()
        topic = self._topics[kind]
        for value in events:
            self._pending.append(await self._producer.send(topic, value, key=key))
            self.events_sent += 1
        if len(self._pending) > 10_000:
            done = [f for f in self._pending if f.done()]
            self._pending = [f for f in self._pending if not f.done()]
            self._raise_failures(done)

    @staticmethod
    def _raise_failures(futures: list[Any]) -> None:
        for fut in futures:
            if fut.done() and not fut.cancelled() and fut.exception() is not None:
                raise ProducerError(f"Kafka did not accept an event: {fut.exception()!r}")
