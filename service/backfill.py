"""Backfill: Labelbox NDJSON files and runstream event files into Kafka, at full speed.

Functional core: ``open_input`` / ``plan_events`` turn lines into ready-to-send ``OutEvent``s and
``BadLine``s (with file, line number and the field at fault) without touching Kafka, so reading and
validation are unit-tested on their own. Imperative shell: ``run_backfill`` sends what the plan
yields through ``KeyedBatchSender``.

Why the sender fills aiokafka record batches itself (``create_batch``/``send_batch``) instead of
calling ``send()`` per message: ``send()`` costs an await, a metadata check and a pure-Python
murmur2 hash per message, which caps a Python producer well below the broker. Here the partition of
a (topic, model run) is hashed once with aiokafka's own ``DefaultPartitioner`` (so keys land where
any Kafka client would put them), and appending to a batch is a C call. Batches still go through the
idempotent producer's accumulator, which stamps producer id and sequence numbers.

Hot path rules: each line is decoded once by orjson for classification (and once more inside
``parse_event`` for event lines), and the original line bytes are what is sent — no re-serialisation.
Rows of a Labelbox NDJSON file are spliced into events byte-wise.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import multiprocessing
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from service.config import Settings
from service.errors import ConfigError, EventValidationError, RunstreamError
from service.events import EventKind, MetricEvent, PredictionEvent, parse_event, parse_ndjson_row
from service.kafka import KafkaEndpoint, make_producer, start_client

__all__ = [
    "DEFAULT_ROWS_PER_EVENT",
    "BackfillError",
    "BackfillStats",
    "BadLine",
    "KeyedBatchSender",
    "OutEvent",
    "RateLimiter",
    "open_input",
    "plan_events",
    "run_backfill",
]

DEFAULT_ROWS_PER_EVENT = 500
GZIP_MAGIC = b"\x1f\x8b"
_MRID_KEYS = ("model_run_id", "modelRunId")
_LABEL_KEYS = frozenset(
    {"label_ids", "labelIds", "project_id", "projectId", "data_row_ids", "dataRowIds", "global_keys", "globalKeys"}
)
_LIST_FIELD: dict[EventKind, bytes] = {"prediction": b"predictions", "metric": b"metrics"}


class BackfillError(RunstreamError):
    """The backfill could not run (unreadable file, Kafka refused the events)."""


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that is not sent, and why; ``field`` is the path inside the line's JSON."""

    file: str
    line: int
    field: str
    reason: str
    error_class: str

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{self.file}:{self.line}: {where}{self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "field": self.field,
            "reason": self.reason,
            "error_class": self.error_class,
        }


class OutEvent(NamedTuple):
    """One Kafka message ready to send: ``value`` is valid per ``parse_event``; ``line`` is its first line.

    A NamedTuple, not a frozen dataclass: one is built per event on the hot path, at a third of the cost.
    """

    kind: EventKind
    model_run_id: str
    value: bytes
    rows: int
    file: str
    line: int


@dataclass(slots=True)
class BackfillStats:
    """Counters filled in while planning and sending; the command prints them as the summary."""

    files: int = 0
    lines_read: int = 0
    rows: int = 0
    events: int = 0
    bad_lines: int = 0
    bytes_read: int = 0
    elapsed_s: float = 0.0
    dry_run: bool = False
    bad: list[BadLine] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0


# --------------------------------------------------------------------------------------------------
# Reading


def open_input(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """Open ``path`` for line reading; gzip is recognised by its magic bytes, whatever the extension.

    Returns ``(lines, raw)``: iterate ``lines``; ``raw.tell()`` is the position in the file on disk
    (for progress on compressed files). Close ``raw`` when done.
    """
    try:
        raw: BinaryIO = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    except OSError as exc:
        raise BackfillError(f"{path}: cannot be read: {exc.strerror}") from exc
    head = raw.read(2)
    raw.seek(0)
    if head == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw  # type: ignore[return-value]
    return raw, raw


def _event_kind(obj: dict[str, Any]) -> EventKind | None:
    if "predictions" in obj or "prediction" in obj:
        return "prediction"
    if "metrics" in obj:
        return "metric"
    if not _LABEL_KEYS.isdisjoint(obj):
        return "label"
    return None


def _row_event_prefix(kind: EventKind, model_run_id: str) -> bytes:
    return b'{"model_run_id":' + orjson.dumps(model_run_id) + b',"' + _LIST_FIELD[kind] + b'":['


def plan_events(
    file: str,
    lines: Iterable[bytes],
    *,
    model_run: str | None,
    max_rows: int = DEFAULT_ROWS_PER_EVENT,
    max_bytes: int = 1_048_576,
    stats: BackfillStats | None = None,
    first_line: int = 1,
) -> Iterator[OutEvent | BadLine]:
    """Classify, validate and group the lines of one file (pure: no I/O beyond iterating ``lines``).

    * a JSON object with ``model_run_id``/``modelRunId`` is a runstream event: validated with
      ``parse_event`` and passed on as its original bytes;
    * any other object is a Labelbox NDJSON row (``metricValue`` means metric), for ``model_run``;
      consecutive rows of one kind are spliced into events of up to ``max_rows`` rows / ``max_bytes``;
    * blank lines are skipped; everything else is a ``BadLine`` and is not sent.
    """
    if max_rows < 1:
        raise ConfigError("rows per event must be at least 1")
    st = stats if stats is not None else BackfillStats()
    # One open group per kind: predictions and metrics go to different topics, so interleaved rows
    # need not cut each other's events short. Row order within a kind (one topic) is kept.
    groups: dict[EventKind, list[bytes]] = {"prediction": [], "metric": []}
    group_line: dict[EventKind, int] = {"prediction": 0, "metric": 0}
    group_bytes: dict[EventKind, int] = {"prediction": 0, "metric": 0}
    prefixes: dict[EventKind, bytes] = {}
    if model_run is not None:
        prefixes = {k: _row_event_prefix(k, model_run) for k in ("prediction", "metric")}
    # an event of rows is prefix + rows joined by "," + "]}"
    overhead = max((len(p) for p in prefixes.values()), default=0) + 2

    def flush(kind: EventKind) -> OutEvent:
        assert model_run is not None
        group = groups[kind]
        value = prefixes[kind] + b",".join(group) + b"]}"
        ev = OutEvent(kind, model_run, value, len(group), file, group_line[kind])
        st.rows += len(group)
        group.clear()
        group_bytes[kind] = 0
        return ev

    def flush_all() -> list[OutEvent]:
        """Both open groups, the one that started first first."""
        kinds = sorted((k for k in groups if groups[k]), key=group_line.__getitem__)
        return [flush(k) for k in kinds]

    lineno = first_line - 1
    for raw_line in lines:
        lineno += 1
        st.lines_read += 1
        line = raw_line.strip()
        if not line:
            continue
        if b'"model_run_id"' in line or b'"modelRunId"' in line:
            # Fast path for event lines: guess the kind from the bytes and let parse_event decode once.
            # A wrong guess cannot pass (the kinds' allowed keys differ), it only falls through to the
            # exact path below, which also produces the error message for a bad line.
            guess: EventKind = (
                "metric" if b'"metrics"' in line else "prediction" if b'"prediction' in line else "label"
            )
            try:
                fast = parse_event(guess, line, max_bytes=max_bytes)
            except EventValidationError:
                fast = None
            if fast is not None:
                if groups["prediction"] or groups["metric"]:
                    yield from flush_all()
                n = (
                    len(fast.predictions)
                    if isinstance(fast, PredictionEvent)
                    else len(fast.metrics)
                    if isinstance(fast, MetricEvent)
                    else 0
                )
                st.rows += n
                yield OutEvent(guess, fast.model_run_id, line, n, file, lineno)
                continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            st.bad_lines += 1
            yield BadLine(file, lineno, "", f"not valid JSON: {exc}", "json")
            continue
        if not isinstance(obj, dict):
            st.bad_lines += 1
            yield BadLine(file, lineno, "", "expected a JSON object (an event or a Labelbox NDJSON row)", "json")
            continue

        if "model_run_id" in obj or "modelRunId" in obj:
            if groups["prediction"] or groups["metric"]:
                yield from flush_all()
            kind = _event_kind(obj)
            if kind is None:
                st.bad_lines += 1
                yield BadLine(
                    file,
                    lineno,
                    "predictions",
                    "an event needs predictions/prediction, metrics, or one of label_ids, project_id, "
                    "data_row_ids, global_keys",
                    "schema",
                )
                continue
            try:
                event = parse_event(kind, line, max_bytes=max_bytes)
            except EventValidationError as exc:
                st.bad_lines += 1
                yield BadLine(file, lineno, exc.field, exc.reason, exc.error_class)
                continue
            n = (
                len(event.predictions)
                if isinstance(event, PredictionEvent)
                else len(event.metrics)
                if isinstance(event, MetricEvent)
                else 0
            )
            st.rows += n
            yield OutEvent(kind, event.model_run_id, line, n, file, lineno)
            continue

        if model_run is None:
            st.bad_lines += 1
            yield BadLine(
                file,
                lineno,
                "model_run_id",
                "a Labelbox NDJSON row names no model run; pass --model-run (or write event lines)",
                "schema",
            )
            continue
        try:
            parse_ndjson_row(obj, model_run_id=model_run, path="row")
        except EventValidationError as exc:
            st.bad_lines += 1
            # the row is the whole line, so its fields are named from the top (dataRow, not row.dataRow)
            fld = exc.field[4:] if exc.field.startswith("row.") else exc.field
            yield BadLine(file, lineno, fld, exc.reason, exc.error_class)
            continue
        size = len(line) + 1
        if size + overhead > max_bytes:
            st.bad_lines += 1
            yield BadLine(
                file, lineno, "row", f"row is {len(line)} bytes; with the event around it over {max_bytes}", "too_large"
            )
            continue
        kind = "metric" if "metricValue" in obj else "prediction"
        group = groups[kind]
        if group and (len(group) >= max_rows or group_bytes[kind] + size + overhead > max_bytes):
            yield flush(kind)
        if not group:
            group_line[kind] = lineno
        group.append(line)
        group_bytes[kind] += size
    yield from flush_all()


# --------------------------------------------------------------------------------------------------
# Rate limiting (pure: the caller supplies the clock and does the sleeping)


class RateLimiter:
    """Events/s ceiling as a schedule: event k may go at ``start + k/rate``; returns how long to wait."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ConfigError("--rate must be positive")
        self._interval = 1.0 / rate
        self._next: float | None = None

    def delay(self, now: float) -> float:
        if self._next is None or self._next < now - 1.0:  # idle for a while: no burst to catch up
            self._next = now
        wait = self._next - now
        self._next += self._interval
        return max(wait, 0.0)


# --------------------------------------------------------------------------------------------------
# Sending


class KeyedBatchSender:
    """Appends keyed messages to per-partition aiokafka record batches and hands full ones to the producer."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._partitioner = DefaultPartitioner()
        self._partitions: dict[tuple[str, bytes], tuple[str, int]] = {}
        self._open: dict[tuple[str, int], Any] = {}
        self._futures: list[asyncio.Future[Any]] = []
        self.messages = 0

    async def _tp(self, topic: str, key: bytes) -> tuple[str, int]:
        try:
            parts = await self._producer.partitions_for(topic)
        except KafkaError as exc:
            raise BackfillError(f"topic {topic} is not available: {exc!r}") from exc
        if not parts:
            raise BackfillError(f"topic {topic} has no partitions (does it exist?)")
        ordered = sorted(parts)
        tp = (topic, self._partitioner(key, ordered, ordered))
        self._partitions[(topic, key)] = tp
        return tp

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        tp = self._partitions.get((topic, key))
        if tp is None:
            tp = await self._tp(topic, key)
        batch = self._open.get(tp)
        if batch is not None and batch.append(timestamp=None, key=key, value=value) is not None:
            self.messages += 1
            return
        if batch is not None:
            await self._submit(tp, batch)
        batch = self._open[tp] = self._producer.create_batch()
        if batch.append(timestamp=None, key=key, value=value) is None:  # pragma: no cover - first record always fits
            raise BackfillError(f"a message of {len(value)} bytes does not fit into an empty record batch")
        self.messages += 1

    async def _submit(self, tp: tuple[str, int], batch: Any) -> None:
        del self._open[tp]
        batch.close()
        self._futures.append(await self._producer.send_batch(batch, tp[0], partition=tp[1]))
        if len(self._futures) >= 256:
            await self._reap(wait=False)

    async def submit_open(self) -> None:
        """Hand every partly filled batch to the producer (before sleeping, and at the end)."""
        for tp, batch in list(self._open.items()):
            await self._submit(tp, batch)

    async def _reap(self, *, wait: bool) -> None:
        if wait and self._futures:
            await asyncio.wait(self._futures)
        still: list[asyncio.Future[Any]] = []
        for fut in self._futures:
            if not fut.done():
                still.append(fut)
            elif fut.exception() is not None:
                raise BackfillError(f"Kafka did not accept a batch: {fut.exception()!r}")
        self._futures = still

    async def flush(self) -> None:
        """Send everything and wait until Kafka acknowledged it (raises ``BackfillError`` otherwise)."""
        await self.submit_open()
        await self._reap(wait=True)


def make_backfill_producer(settings: Settings, *, linger_ms: int = 20, compression_type: str | None = None) -> Any:
    """Idempotent producer tuned for throughput: big batches, some linger, acks from all replicas."""
    return make_producer(
        backfill_endpoint(settings),
        client_id="runstream-backfill",
        linger_ms=linger_ms,
        # below the broker's default message.max.bytes (1 MiB + 12) so a full batch is never refused
        max_batch_size=900_000,
        max_request_size=max(1_048_576, settings.max_message_bytes + 4096),
        compression_type=compression_type,
        request_timeout_ms=60_000,
    )


def backfill_endpoint(settings: Settings) -> KafkaEndpoint:
    return KafkaEndpoint.from_settings(settings, hint="start a broker with 'runstream dev-kafka start'")


ProgressFn = Callable[[BackfillStats], None]
Item = OutEvent | BadLine

BLOCK_BYTES = 1 << 20
_IN_PROCESS_BATCH = 512


def plan_block(
    file: str, block: bytes, first_line: int, model_run: str | None, max_rows: int, max_bytes: int
) -> tuple[list[Item], int, int, int]:
    """``plan_events`` over one block of whole lines, for a worker process; returns (items, lines, rows, bad).

    Row groups do not span blocks, so an event may end early at a block boundary (still valid).
    """
    st = BackfillStats()
    lines = block.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    items = list(
        plan_events(file, lines, model_run=model_run, max_rows=max_rows, max_bytes=max_bytes, stats=st,
                    first_line=first_line)
    )  # fmt: skip
    return items, st.lines_read, st.rows, st.bad_lines


def _blocks(stream: BinaryIO, size: int = BLOCK_BYTES) -> Iterator[tuple[bytes, int]]:
    """Blocks of whole lines with the number of lines before each (so line numbers stay exact)."""
    carry = b""
    seen = 0
    while True:
        chunk = stream.read(size)
        if not chunk:
            break
        data = carry + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
            continue
        block, carry = data[: cut + 1], data[cut + 1 :]
        yield block, seen
        seen += block.count(b"\n")
    if carry:
        yield carry, seen


async def _planned(
    path: Path,
    stream: BinaryIO,
    stats: BackfillStats,
    *,
    model_run: str | None,
    max_rows: int,
    max_bytes: int,
    pool: Executor | None,
    workers: int,
) -> AsyncIterator[list[Item]]:
    """The plan of one file in lists of items, in file order: in this process, or fanned out to ``pool``."""
    name = str(path)
    if pool is None:
        it = plan_events(name, stream, model_run=model_run, max_rows=max_rows, max_bytes=max_bytes, stats=stats)
        while batch := list(itertools.islice(it, _IN_PROCESS_BATCH)):
            yield batch
        return
    loop = asyncio.get_running_loop()
    inflight: deque[asyncio.Future[tuple[list[Item], int, int, int]]] = deque()

    async def harvest() -> list[Item]:
        items, lines, rows, bad = await inflight.popleft()
        stats.lines_read += lines
        stats.rows += rows
        stats.bad_lines += bad
        return items

    for block, before in _blocks(stream):
        inflight.append(
            loop.run_in_executor(pool, plan_block, name, block, before + 1, model_run, max_rows, max_bytes)
        )
        if len(inflight) >= 2 * workers:
            yield await harvest()
    while inflight:
        yield await harvest()


async def run_backfill(
    paths: Sequence[Path],
    settings: Settings,
    *,
    model_run: str | None = None,
    rate: float | None = None,
    dry_run: bool = False,
    max_rows: int = DEFAULT_ROWS_PER_EVENT,
    workers: int = 0,
    keep_bad: int = 1000,
    on_bad: Callable[[BadLine], None] | None = None,
    on_progress: ProgressFn | None = None,
    compression_type: str | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> BackfillStats:
    """Plan every file and (unless ``dry_run``) send the events keyed by model run; return the stats.

    ``workers`` > 0 validates in that many processes (validation is the CPU cost; sending stays here,
    in file order, so per-run order holds).
    """
    stats = BackfillStats(dry_run=dry_run)
    topics: dict[EventKind, str] = {
        "prediction": settings.topic_predictions,
        "metric": settings.topic_metrics,
        "label": settings.topic_labels,
    }
    limiter = RateLimiter(rate) if rate else None
    producer = None if dry_run else make_backfill_producer(settings, compression_type=compression_type)
    sender: KeyedBatchSender | None = None
    pool = (
        ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        if workers > 0
        else None
    )
    t0 = clock()
    if producer is not None:
        try:
            await start_client(producer, backfill_endpoint(settings), "backfill")
        except Exception as exc:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            reason = str(exc) if isinstance(exc, RunstreamError) else f"cannot connect to Kafka: {exc!r}"
            raise BackfillError(reason) from exc
        sender = KeyedBatchSender(producer)
    keys: dict[str, bytes] = {}
    try:
        for path in paths:
            lines, raw = open_input(path)
            stats.files += 1
            base_bytes = stats.bytes_read
            try:
                async for batch in _planned(
                    path, lines, stats, model_run=model_run, max_rows=max_rows,
                    max_bytes=settings.max_message_bytes, pool=pool, workers=workers,
                ):  # fmt: skip
                    for item in batch:
                        if type(item) is OutEvent:
                            stats.events += 1
                            stats.by_kind[item.kind] = stats.by_kind.get(item.kind, 0) + 1
                            if sender is not None:
                                if limiter is not None:
                                    wait = limiter.delay(clock())
                                    if wait > 0.002:
                                        await sender.submit_open()
                                        await asyncio.sleep(wait)
                                key = keys.get(item.model_run_id)
                                if key is None:
                                    key = keys[item.model_run_id] = item.model_run_id.encode()
                                await sender.send(topics[item.kind], key, item.value)
                        else:
                            assert isinstance(item, BadLine)
                            if len(stats.bad) < keep_bad:
                                stats.bad.append(item)
                            if on_bad is not None:
                                on_bad(item)
                    if on_progress is not None:
                        stats.bytes_read = base_bytes + raw.tell()
                        stats.elapsed_s = clock() - t0
                        on_progress(stats)
            except OSError as exc:
                raise BackfillError(f"{path}: read failed: {exc}") from exc
            except EOFError as exc:
                raise BackfillError(f"{path}: truncated gzip stream: {exc}") from exc
            finally:
                stats.bytes_read = base_bytes + path.stat().st_size
                raw.close()
        if sender is not None:
            await sender.flush()
    except KafkaError as exc:
        raise BackfillError(f"Kafka did not take the backfill: {exc!r}") from exc
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if producer is not None:
            await producer.stop()
    stats.elapsed_s = clock() - t0
    if on_progress is not None:
        on_progress(stats)
    return stats
