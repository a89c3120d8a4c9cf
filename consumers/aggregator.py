"""The aggregator consumer (group ``runstream-aggregator``): exactly-once running aggregates.

Why its own loop rather than consumers.runtime: the uploader commits offsets to Kafka after
Labelbox acknowledged; here the *state store* is the source of truth for offsets. Every
``state_commit_interval_ms`` the aggregate changes and the next offsets are written in one
store transaction; on assignment we seek to the stored offsets, so a crash or a rebalance
replays exactly the messages whose effect was not stored. Offsets are also committed to
Kafka afterwards, best effort, only so lag is visible to the usual tools (and KEDA).

The loop reads poll → parse → apply → checkpoint. Each poll (up to ``max_batch`` records) is
parsed first, then every cold state row the batch will read is loaded with one query per table
(CachedState.prefetch), then the messages are applied in chunks of ``apply_chunk`` with
service.aggregation.apply_batch (leaf writes collected per tree, each changed tree recomputed
once). The commit lifecycle is service.state.Checkpoint: at each tick past the interval (or as
soon as a poll comes back empty: caught up, nothing to batch the changes with) the changes are
encoded to rows and written in a thread while the next chunks are applied (pipelined);
the next commit (or a rebalance) first waits for it. Ticks come between chunks,
so the interval holds however long a poll batch takes. State and offsets still go in one
transaction, and the cache keeps every row of the in-flight commit, so nothing reads a stale
row; if the commit is fenced off, everything since the stored offsets is dropped and re-read
(the usual recovery path).

Where ``runstream run`` tuned the collector, the cyclic GC is off while a batch is applied and the
batch's survivors (cached trees, encoded commit rows) are frozen afterwards
(service.gc_tuning.BatchGc): young collections would otherwise traverse them again and again.

A message is the unit of rejection: it is validated as a whole before anything changes
(service.aggregation.apply_batch); an aggregate conflict or domain error sends it to the
DLQ once. Messages that fail parsing are dead-lettered by the uploader group reading the same
topics; the aggregator only counts and logs them (no duplicate DLQ entries per message).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from consumers.dlq import DlqHeaders, DlqWriter
from consumers.shutdown import bounded
from service.aggregation import (
    AggregateError,
    AnnotationUpdate,
    MessageOps,
    MetricLeaf,
    apply_batch,
    normalize_value,
)
from service.config import Settings
from service.errors import ConfigError, EventValidationError
from service.events import EventKind, MetricEvent, PredictionEvent, parse_event
from service.gc_tuning import BatchGc, tuned
from service.health import Probe
from service.kafka import START_TIMEOUT_S, KafkaEndpoint, make_consumer, start_client
from service.prometheus import ConsumerMetrics
from service.state import CachedState, Checkpoint, SqlStateBackend, StateBackend, open_backend

log = logging.getLogger("runstream.aggregator")

TP = tuple[str, int]


def ops_from_event(event: PredictionEvent | MetricEvent) -> MessageOps:
    """Translate a parsed event into leaf operations (data rows keyed ``id:…`` / ``gk:…``)."""
    intern = sys.intern  # run, metric and feature names repeat in every cached key: store each once
    ops = MessageOps(intern(event.model_run_id))
    if isinstance(event, MetricEvent):
        append = ops.metric_rows.append
        make = MetricLeaf._make  # tuple.__new__ on one tuple: cheaper than the generated __new__
        for row in event.metrics:
            f = row.feature_name
            s = row.subclass_name
            v = row.checked_value  # a plain float as accepted; ``value`` re-keys confidence dicts
            append(
                make(
                    (
                        intern(row.metric_name or ""),
                        row.aggregation,
                        row.data_row.key(),
                        intern(f) if f is not None else None,
                        intern(s) if s is not None else None,
                        {"": v} if type(v) is float else normalize_value(row.value),
                    )
                )
            )
        return ops
    for pred in event.predictions:
        dr = pred.data_row.key()
        leaves = tuple(
            MetricLeaf(
                metric=leaf.name,
                aggregation="ARITHMETIC_MEAN",  # customMetrics carry none: Labelbox's default
                data_row=dr,
                feature=leaf.feature,
                subclass=leaf.subclass,
                value={"": float(leaf.value)},
            )
            for leaf in pred.custom_metric_leaves()
        )
        ops.annotations.append(AnnotationUpdate(pred.uuid, leaves))
    return ops


class AggregatorProbe:
    """The aggregator as /healthz and /readyz see it (service/health.py), also before run_aggregator
    has built it: pass ``attach`` as run_aggregator's ``on_ready``."""

    def __init__(self) -> None:
        self.aggregator: Aggregator | None = None

    def attach(self, aggregator: Aggregator) -> None:
        self.aggregator = aggregator

    def probe(self, name: str = "aggregator") -> Probe:
        return Probe(name, self._last_progress, self._not_ready_reason)

    def _last_progress(self) -> float:
        # Until it exists, start-up counts as progress: liveness is for a loop that stopped, not one not begun.
        return self.aggregator.last_progress if self.aggregator is not None else time.monotonic()

    def _not_ready_reason(self) -> str | None:
        return self.aggregator.not_ready_reason() if self.aggregator is not None else "not started"


@dataclass
class AggregatorStats:
    """What the bench and readiness read; commits, fencing and assignment are the Checkpoint's."""

    rejected: int = 0  # messages dead-lettered (aggregate.conflict / aggregate.domain)
    invalid: int = 0  # messages that failed parsing (the uploader dead-letters them)
    recovering: bool = True


class Aggregator:
    """Consumes predictions + metrics into the state store; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        backend: StateBackend,
        *,
        dlq: DlqWriter | None = None,
        max_cached: int = 50_000,  # cached rows (trees, run aggregates, ...): bounds memory
        max_batch: int = 10_000,
        on_commit: Callable[[], None] | None = None,
        metrics: ConsumerMetrics | None = None,
        batch_gc: BatchGc | None = None,
    ) -> None:
        if not settings.kafka_bootstrap:
            raise ConfigError("the aggregator needs RUNSTREAM_KAFKA_BOOTSTRAP")
        self.settings = settings
        self.backend = backend
        self.state = CachedState(backend, max_clean=max_cached)
        self.group = settings.aggregator_group
        self.topics = (settings.topic_predictions, settings.topic_metrics)
        self.stats = AggregatorStats()
        self._dlq = dlq
        self._own_dlq = dlq is None
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self.last_progress = time.monotonic()  # liveness: the poll loop is turning
        self.max_batch = max_batch
        # Collector off while a batch is applied, its survivors frozen after (service.gc_tuning):
        # only where the process entry point tuned the collector, never inside a library user.
        self.batch_gc = batch_gc if batch_gc is not None else BatchGc() if tuned() else None
        # messages applied as one batch (apply_batch) between commit-deadline checks
        self.apply_chunk = 2500
        self.metrics = metrics if metrics is not None else ConsumerMetrics.create()
        self.checkpoint = Checkpoint(
            backend,
            self.state,
            self.group,
            interval_s=settings.state_commit_interval_ms / 1000.0,
            seek=self._seek,
            on_commit=on_commit,
            commit_seconds=self.metrics.aggregator_commit_seconds.labels(self.group),
        )

    @property
    def ready(self) -> bool:
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why /readyz says no, or None: connected and not reloading state after a fenced commit."""
        if self.stats.recovering:
            return "recovering state"
        return None if self._consumer is not None else "not connected"

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        assert s.kafka_bootstrap
        endpoint = KafkaEndpoint.from_settings(s)
        consumer = make_consumer(
            endpoint,
            group_id=self.group,
            max_partition_fetch_bytes=max(1_048_576, s.max_message_bytes),
            fetch_max_bytes=max(52_428_800, s.max_message_bytes),
        )
        consumer.subscribe(list(self.topics), listener=_Listener(self))
        if self._dlq is None:
            self._dlq = DlqWriter(s.kafka_bootstrap, s.topic_dlq, client_options=s.kafka_client_options())
        if self._own_dlq:
            await self._dlq.start(stop)
        await start_client(consumer, endpoint, f"consumer {self.group}", retry_for_s=START_TIMEOUT_S, stop=stop)
        self._consumer = consumer
        checkpoint = self.checkpoint
        checkpoint.start_clock()
        try:
            while not stop.is_set():
                self.last_progress = time.monotonic()
                batch = await consumer.getmany(timeout_ms=100, max_records=self.max_batch)
                async with self._lock:
                    if batch:
                        await self._process_batch(batch)
                    else:
                        await checkpoint.tick(idle=True)
                        if self.batch_gc is not None:
                            self.batch_gc.idle()
                    published = checkpoint.take_published()
                if published:
                    await self._kafka_commit(published)
            async with self._lock:
                await checkpoint.close()
                published = checkpoint.take_published()
            if published:
                await bounded(self._kafka_commit(published), "Kafka offset mirror commit")
        finally:
            self._consumer = None
            await checkpoint.wait_idle()
            try:
                await bounded(consumer.stop(), f"leaving group {self.group}")
            finally:
                if self._own_dlq and self._dlq is not None:
                    await self._dlq.stop()

    # ---- per batch

    async def _process_batch(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """_process, then the checkpoint tick (which encodes a due commit), under the batch GC policy."""
        gc_policy = self.batch_gc
        if gc_policy is not None:
            gc_policy.pause()
        try:
            await self._process(batch)
            await self.checkpoint.tick()
        finally:
            if gc_policy is not None:
                gc_policy.resume()

    async def _process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Parse, prefetch cold state in bulk, apply in offset order, checkpoint. Caller holds the lock."""
        cp = self.checkpoint
        items: list[tuple[Any, MessageOps | None]] = []
        for tp, records in batch.items():
            key = (tp.topic, tp.partition)
            if key not in cp.assigned:
                continue  # fetched before a revoke
            pos = cp.positions.get(key)
            kind: EventKind = "prediction" if tp.topic == self.settings.topic_predictions else "metric"
            for rec in records:
                if pos is not None and rec.offset < pos:
                    continue  # fetched before a seek: already applied
                items.append((rec, self._parse(rec, kind)))
        if not items:
            return
        await asyncio.to_thread(self.state.prefetch, [ops for _rec, ops in items if ops is not None])
        outcomes: Counter[tuple[str, str]] = Counter()
        state = self.state
        step = self.apply_chunk
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            valid = [(rec, ops) for rec, ops in chunk if ops is not None]
            rejected = apply_batch(state, [ops for _rec, ops in valid])
            for rec, _ops in valid:
                outcomes[(rec.topic, "applied")] += 1
            for i, exc in rejected:
                rec = valid[i][0]
                await self._dead_letter(rec, exc)
                outcomes[(rec.topic, "applied")] -= 1
                outcomes[(rec.topic, "dlq")] += 1
            for rec, ops in chunk:
                if ops is None:
                    outcomes[(rec.topic, "skipped")] += 1
                cp.advance((rec.topic, rec.partition), rec.offset + 1)
            if start + step < len(items):
                # A batch can take longer than the commit interval: checkpoint between chunks
                # (state and positions agree after every chunk) so the interval holds; keep the
                # cache whole, the rest of the batch was prefetched into it.
                if not await cp.tick(evict=False):
                    break  # fenced off: state was reset and partitions re-seeked; drop the rest
                await asyncio.sleep(0)  # let the query API and heartbeats in during a big batch
        stats = self.stats
        events = self.metrics.events
        for (topic, outcome), n in outcomes.items():
            events.labels(self.group, topic, outcome).inc(n)
            if outcome == "dlq":
                stats.rejected += n
            elif outcome == "skipped":
                stats.invalid += n

    # ---- per message

    def _parse(self, rec: Any, kind: EventKind) -> MessageOps | None:
        try:
            event = parse_event(kind, rec.value, max_bytes=self.settings.max_message_bytes)
        except EventValidationError as exc:
            log.warning(
                "skipping invalid message %s[%d]@%d (%s): %s; the uploader dead-letters it",
                rec.topic,
                rec.partition,
                rec.offset,
                exc.error_class,
                exc,
            )
            return None
        assert isinstance(event, PredictionEvent | MetricEvent)
        return ops_from_event(event)

    async def _dead_letter(self, rec: Any, exc: AggregateError) -> None:
        assert self._dlq is not None
        await self._dlq.send(
            rec.key,
            rec.value,
            DlqHeaders.for_record(rec, error_class=exc.error_class, message=str(exc), group=self.group),
        )

    # ---- offsets and rebalance

    async def _kafka_commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Mirror stored offsets to Kafka for lag visibility only; failures do not matter."""
        consumer = self._consumer
        if consumer is None or not offsets:
            return
        try:
            # Bounded: with the broker gone, commit() waits for a coordinator forever and the loop
            # would never see a stop request.
            await asyncio.wait_for(consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()}), 5.0)
        except (KafkaError, AssertionError, TimeoutError) as exc:
            log.debug("kafka offset commit skipped: %r", exc)

    async def _seek(self, tp: tuple[str, int], offset: int | None) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        if offset is None:
            await consumer.seek_to_beginning(TopicPartition(*tp))
        else:
            consumer.seek(TopicPartition(*tp), offset)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Flush state + offsets while we still own the partitions, then forget cached state."""
        async with self._lock:
            self.stats.recovering = True
            await self.checkpoint.on_revoked({(tp.topic, tp.partition) for tp in revoked})

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Seek every new partition to the offset the store holds (the beginning if none)."""
        async with self._lock:
            await self.checkpoint.on_assigned({(tp.topic, tp.partition) for tp in assigned})
            self.stats.recovering = False


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, agg: Aggregator) -> None:
        self._agg = agg

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._agg.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._agg.on_assigned(assigned)


async def run_aggregator(
    settings: Settings,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[Aggregator], None] | None = None,
    registry: CollectorRegistry | None = None,
    metrics: ConsumerMetrics | None = None,
) -> None:
    """Entry point of ``runstream run --role aggregator``: owns its store connection.

    Pass ``metrics`` to share one ConsumerMetrics with the uploader (one registry, one set of
    metric families); else a new one is created on ``registry``.
    """
    backend: SqlStateBackend = open_backend(settings)
    try:
        if metrics is None:
            metrics = ConsumerMetrics.create(registry)
        agg = Aggregator(settings, backend, metrics=metrics)
        if on_ready is not None:
            on_ready(agg)
        await agg.run(stop)
    finally:
        backend.close()
