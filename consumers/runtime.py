"""Reusable Kafka consumer runtime: batching, concurrent batches, ordered commits, DLQ,
rebalances, backpressure and graceful shutdown. The imperative shell around pure parts
(service.batching, service.offsets).

A ``BatchHandler`` supplies two things: ``intake`` (sync, per record: accept into a
batch keyed e.g. by model run, or reject to the DLQ) and ``process`` (async, per flushed
batch: do the work, return the records that must be dead-lettered). The runtime owns
everything Kafka: it commits an offset only when its record and every earlier fetched
record of the partition is done (processed, or DLQ'd with the broker's ack).

Why not aiokafka's autocommit: it commits what was fetched, not what was delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from consumers.dlq import DlqHeaders, DlqWriter
from consumers.dlq.transactional import Letter, TransactionalDlq
from consumers.shutdown import bounded
from service.batching import Batch, Batcher, BatchLimits
from service.errors import RunstreamError
from service.health import Probe
from service.kafka import START_TIMEOUT_S, KafkaEndpoint, make_consumer, start_client
from service.offsets import OffsetTracker
from service.prometheus import ConsumerMetrics

W = TypeVar("W")
W_co = TypeVar("W_co", covariant=True)
# Builds a NamedTuple without its generated Python-level __new__ (one Record per message).
_new_tuple = tuple.__new__


class FatalPipelineError(RunstreamError):
    """The pipeline cannot go on (e.g. bad credentials): stop, commit nothing more, DLQ nothing."""


class Record(NamedTuple):
    """What the runtime keeps of a ConsumerRecord: coordinates and the original bytes.

    A NamedTuple (immutable, a third of a frozen dataclass's construction cost, and untracked by
    the cyclic GC once seen): one is built per message on the hot path.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


class Accepted(NamedTuple, Generic[W_co]):
    """``intake`` result: put ``item`` into the batch ``key``; ``size`` counts toward memory limits."""

    key: str
    item: W_co
    size: int


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that goes to the DLQ with a stable error class and a message naming the problem."""

    record: Record
    error_class: str
    message: str
    quiet: bool = False  # the handler logs these itself, once for many (no line per message)


Work = tuple[Record, W]


class BatchHandler(Protocol[W]):
    def intake(self, record: Record) -> Accepted[W] | Rejection: ...

    async def process(self, key: str, items: list[tuple[Record, W]]) -> list[Rejection]:
        """Deliver a batch; raise FatalPipelineError to stop the pipeline."""
        ...


@dataclass
class RuntimeStatus:
    """Shared with health endpoints: liveness from loop progress, readiness from assignment."""

    started: bool = False
    joined: bool = False  # completed at least one group join (an assignment may be empty)
    assigned: tuple[tuple[str, int], ...] = ()
    fatal: str | None = None
    outage: str | None = None  # a dependency failing right now (e.g. DLQ writes); retried, not fatal
    stopping: bool = False
    rebalancing: bool = False
    last_progress: float = field(default_factory=time.monotonic)

    def not_ready_reason(self) -> str | None:
        """Why this member should not count as ready; None when it should.

        A member that joined the group with no partitions is ready: with more replicas than
        partitions the spare ones are healthy standbys, and an unready pod would hold up rolling
        updates and read as an outage (DESIGN §5).
        """
        if self.fatal:
            return self.fatal
        if self.outage:
            return self.outage
        if not self.started:
            return "not started"
        if self.stopping:
            return "stopping"
        if self.rebalancing:
            return "rebalancing"
        return None if self.joined else "not joined the consumer group yet"

    @property
    def ready(self) -> bool:
        return self.not_ready_reason() is None

    def probe(self, name: str) -> Probe:
        """This member as seen by /healthz and /readyz (service/health.py)."""
        return Probe(name, lambda: self.last_progress, self.not_ready_reason)


@dataclass(frozen=True)
class RuntimeConfig:
    bootstrap: str
    group_id: str
    topics: tuple[str, ...]
    limits: BatchLimits
    max_in_flight_batches: int = 4
    max_buffered_bytes: int = 64 * 1_048_576
    shutdown_grace_s: float = 30.0
    rebalance_grace_s: float = 30.0
    client_options: dict[str, Any] = field(default_factory=dict)
    max_poll_records: int = 2_000
    max_partition_fetch_bytes: int = 1_048_576
    fetch_max_bytes: int = 16 * 1_048_576
    lag_interval_s: float = 5.0
    auto_offset_reset: str = "earliest"


class ConsumerRuntime(Generic[W]):
    """Runs one consumer group member until ``stop`` is set (or a fatal error)."""

    def __init__(
        self,
        config: RuntimeConfig,
        handler: BatchHandler[W],
        dlq: DlqWriter | TransactionalDlq,
        metrics: ConsumerMetrics,
        status: RuntimeStatus | None = None,
        log: Any = None,
    ) -> None:
        self.config = config
        self.handler = handler
        self.dlq = dlq
        self.metrics = metrics
        self.status = status or RuntimeStatus()
        self.log = log if log is not None else structlog.get_logger("runstream.runtime")
        self.tracker = OffsetTracker()
        self.batcher: Batcher[Work[W]] = Batcher(config.limits)
        self._sem = asyncio.Semaphore(config.max_in_flight_batches)
        self._tasks: set[asyncio.Task[None]] = set()
        # The last launched batch of each key (model run): a batch starts only after its
        # predecessor of the same key has finished, so imports land in offset order and a later
        # version of a row (Labelbox upserts by uuid / metric key) is never overwritten by an earlier one.
        self._key_tail: dict[str, asyncio.Task[None]] = {}
        self._inflight_bytes = 0
        self._commit_lock = asyncio.Lock()
        self._commit_wakeup = asyncio.Event()
        self._want_pause = False
        self._consumer: AIOKafkaConsumer | None = None
        self._fatal_event = asyncio.Event()
        self._g = config.group_id
        if dlq.on_failing is None:
            dlq.on_failing = self._on_dlq_failing

    # ---------------------------------------------------------------- public

    @property
    def buffered_bytes(self) -> int:
        letters = self.dlq.pending_bytes if isinstance(self.dlq, TransactionalDlq) else 0  # waiting for a commit
        return self.batcher.buffered_bytes + self._inflight_bytes + letters

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        endpoint = KafkaEndpoint(cfg.bootstrap, cfg.client_options)
        consumer = make_consumer(
            endpoint,
            group_id=cfg.group_id,
            auto_offset_reset=cfg.auto_offset_reset,
            max_partition_fetch_bytes=cfg.max_partition_fetch_bytes,
            fetch_max_bytes=cfg.fetch_max_bytes,
            max_poll_records=cfg.max_poll_records,
        )
        self._consumer = consumer
        consumer.subscribe(list(cfg.topics), listener=_Listener(self))
        await start_client(consumer, endpoint, f"consumer {cfg.group_id}", retry_for_s=START_TIMEOUT_S, stop=stop)
        self.status.started = True
        committer = asyncio.create_task(self._committer())
        lag_task = asyncio.create_task(self._lag_reporter())
        try:
            await self._loop(consumer, stop)
        finally:
            self.status.stopping = True
            self.metrics.ready.labels(self._g).set(0)
            if self.status.fatal is None:
                await self._finish_in_flight(cfg.shutdown_grace_s, "shutdown")
                wanted = self.tracker.committable()
                done = asyncio.ensure_future(self._commit())
                if await bounded(done, "final offset commit", uncommitted=_tp_text(wanted)) and done.result():
                    self.log.info("final commit done", in_flight=self.tracker.in_flight(),
                                  buffered_bytes=self.buffered_bytes)
                else:
                    self.log.warning("final commit failed: these offsets stay uncommitted and their messages are "
                                     "re-delivered to the next owner", offsets=_tp_text(wanted))
            else:
                await self._abandon_all()
            committer.cancel()
            lag_task.cancel()
            await asyncio.gather(committer, lag_task, return_exceptions=True)
            await bounded(consumer.stop(), f"leaving group {cfg.group_id}")
            self._consumer = None
            self.log.info("consumer stopped", group=cfg.group_id, fatal=self.status.fatal)
        if self.status.fatal is not None:
            # Stay up but unready (no commits, no DLQ writes) until told to stop.
            await stop.wait()
            raise FatalPipelineError(self.status.fatal)

    # ---------------------------------------------------------------- loop

    async def _loop(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        stop_wait = asyncio.ensure_future(stop.wait())
        fatal_wait = asyncio.ensure_future(self._fatal_event.wait())
        try:
            while not stop.is_set() and self.status.fatal is None:
                self.status.last_progress = time.monotonic()
                self._apply_backpressure(consumer)
                deadline = self.batcher.next_deadline()
                timeout_ms = 200
                if deadline is not None:
                    timeout_ms = max(0, min(timeout_ms, int((deadline - time.monotonic()) * 1000)))
                fetch = asyncio.ensure_future(consumer.getmany(timeout_ms=timeout_ms))
                done, _ = await asyncio.wait({fetch, stop_wait, fatal_wait}, return_when=asyncio.FIRST_COMPLETED)
                if fetch not in done:
                    fetch.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await fetch
                    break
                try:
                    data = fetch.result()
                except KafkaError as exc:
                    self.log.warning("fetch failed", error=str(exc))
                    await asyncio.sleep(0.5)
                    continue
                now = time.monotonic()
                for tp, recs in data.items():
                    self._intake_fetch(tp.topic, tp.partition, recs, now)
                for batch in self.batcher.due(now):
                    self._launch(batch)
        finally:
            stop_wait.cancel()
            fatal_wait.cancel()

    def _intake_fetch(self, topic: str, partition: int, recs: Sequence[Any], now: float) -> None:
        """One partition's share of a fetch: tracked in one call, then each record into its batch.

        The per-message work is kept to the handler's ``intake``, one Record and one ``Batcher.add``
        (this loop runs for every message, so attribute lookups are hoisted out of it).
        """
        skip = self.tracker.track_many(topic, partition, [cr.offset for cr in recs])
        if skip:  # re-fetched after a seek: already in flight or done in this generation
            recs = recs[skip:]
        intake = self.handler.intake
        add = self.batcher.add
        new = _new_tuple
        for cr in recs:
            rec = new(Record, (topic, partition, cr.offset, cr.key, cr.value, cr.timestamp))
            res = intake(rec)
            if isinstance(res, Rejection):
                size = len(rec.value or b"") + len(rec.key or b"")
                self._inflight_bytes += size
                self._spawn(self._reject_one(res, size))
                continue
            key, item, size = res
            flushed = add(key, (rec, item), size, now)
            if flushed:
                for batch in flushed:
                    self._launch(batch)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _launch(self, batch: Batch[Work[W]]) -> None:
        self._inflight_bytes += batch.size_bytes
        before = self._key_tail.get(batch.key)
        task: asyncio.Task[None] = asyncio.ensure_future(self._run_batch(batch, before))
        self._tasks.add(task)
        self._key_tail[batch.key] = task

        def done(t: asyncio.Task[None], key: str = batch.key) -> None:
            self._tasks.discard(t)
            if self._key_tail.get(key) is t:
                del self._key_tail[key]

        task.add_done_callback(done)

    async def _reject_one(self, rej: Rejection, size: int) -> None:
        try:
            if await self._dead_letter([rej]):
                self._done(rej.record)
        finally:
            self._inflight_bytes -= size
            self._commit_wakeup.set()

    async def _run_batch(self, batch: Batch[Work[W]], before: asyncio.Task[None] | None = None) -> None:
        try:
            if before is not None:
                await asyncio.wait([before])  # its outcome is its own business; only the order matters here
            async with self._sem:
                if self.status.fatal is not None:
                    return
                self.metrics.in_flight_batches.labels(self._g).inc()
                started = time.monotonic()
                try:
                    rejections = await self.handler.process(batch.key, batch.items)
                except FatalPipelineError as exc:
                    self._set_fatal(str(exc))
                    return
                except Exception as exc:  # a bug: stop visibly instead of stalling the partition
                    self.log.exception("batch handler failed")
                    self._set_fatal(f"batch handler failed: {exc!r}")
                    return
                finally:
                    self.metrics.in_flight_batches.labels(self._g).dec()
                if not await self._dead_letter(rejections):
                    return
                by_tp = _offsets_by_partition([it[0] for it in batch.items])
                delivered: dict[str, int] = {}
                for (topic, partition), offsets in by_tp.items():
                    self.tracker.mark_done_many(topic, partition, offsets)
                    delivered[topic] = delivered.get(topic, 0) + len(offsets)
                for r in {(r.record.topic, r.record.partition, r.record.offset): r for r in rejections}.values():
                    delivered[r.record.topic] -= 1
                for topic, n in delivered.items():
                    if n:
                        self.metrics.events.labels(self._g, topic, "delivered").inc(n)
                self.metrics.batch_events.labels(self._g).observe(batch.events)
                self.metrics.batch_seconds.labels(self._g).observe(time.monotonic() - started)
        finally:
            self._inflight_bytes -= batch.size_bytes
            self._commit_wakeup.set()

    def _on_dlq_failing(self, reason: str | None) -> None:
        self.status.outage = None if reason is None else f"DLQ writes failing (retrying): {reason}"
        if self.status.fatal is None and not self.status.stopping:
            self.metrics.ready.labels(self._g).set(1 if reason is None else 0)

    async def _dead_letter(self, rejections: Sequence[Rejection]) -> bool:
        """Write rejections to the DLQ and wait for every ack; False when nothing may be marked done.

        DlqWriter retries every broker error (an outage holds the partition's commits, nothing
        else); what reaches the except clause here is a bug, and stops the pipeline visibly."""
        if not rejections:
            return True
        if self.status.fatal is not None:
            return False
        if isinstance(self.dlq, TransactionalDlq):
            # Written by the transaction that commits past the message (exactly once): consumers/dlq/transactional.py.
            for r in rejections:
                self.dlq.add(r.record.topic, r.record.partition,
                             Letter(r.record.offset, r.record.key, r.record.value, self._headers(r)))
                if not r.quiet:
                    self.log.info("dead-lettered (written with the next commit)", error_class=r.error_class,
                                  error=r.message, topic=r.record.topic, partition=r.record.partition,
                                  offset=r.record.offset)
            return True
        try:
            await asyncio.gather(*(self._dlq_one(r) for r in rejections))
        except Exception as exc:
            self.log.exception("DLQ write failed")
            self._set_fatal(f"DLQ write failed: {exc!r}")
            return False
        return True

    def _headers(self, r: Rejection) -> DlqHeaders:
        return DlqHeaders.for_record(r.record, error_class=r.error_class, message=r.message, group=self.config.group_id)

    async def _dlq_one(self, r: Rejection) -> None:
        assert isinstance(self.dlq, DlqWriter)
        await self.dlq.send(r.record.key, r.record.value, self._headers(r))
        self.metrics.dlq_messages.labels(self._g, r.error_class).inc()
        self.metrics.events.labels(self._g, r.record.topic, "dlq").inc()
        if not r.quiet:
            self.log.info("dead-lettered", error_class=r.error_class, error=r.message, topic=r.record.topic,
                          partition=r.record.partition, offset=r.record.offset)

    def _done(self, rec: Record) -> None:
        self.tracker.mark_done(rec.topic, rec.partition, rec.offset)

    def _set_fatal(self, reason: str) -> None:
        if self.status.fatal is None:
            self.status.fatal = reason
            self.metrics.ready.labels(self._g).set(0)
            self.log.error("pipeline stopped: fatal error; nothing more is committed or dead-lettered",
                           reason=reason)
            self._fatal_event.set()

    # ---------------------------------------------------------------- backpressure

    def _apply_backpressure(self, consumer: AIOKafkaConsumer) -> None:
        buffered = self.buffered_bytes
        limit = self.config.max_buffered_bytes
        if not self._want_pause and buffered >= limit:
            self._want_pause = True
            self.log.info("pausing fetch (backpressure)", buffered_bytes=buffered, limit=limit)
        elif self._want_pause and buffered < limit // 2:
            self._want_pause = False
            self.log.info("resuming fetch", buffered_bytes=buffered)
        self.metrics.buffered_bytes.labels(self._g).set(buffered)
        self.metrics.paused.labels(self._g).set(1 if self._want_pause else 0)
        self._sync_pause(consumer)

    def _sync_pause(self, consumer: AIOKafkaConsumer) -> None:
        """Make the paused set match the decision; re-applies pauses after a rebalance."""
        assigned = consumer.assignment()
        paused = consumer.paused()
        if self._want_pause:
            missing = assigned - paused
            if missing:
                consumer.pause(*missing)
        elif paused:
            consumer.resume(*paused)

    # ---------------------------------------------------------------- commits

    async def _committer(self) -> None:
        while True:
            # Also once a second without a completion: a commit that failed (broker outage) is retried.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._commit_wakeup.wait(), 1.0)
            self._commit_wakeup.clear()
            await self._commit()
            await asyncio.sleep(0.02)  # coalesce bursts of completions

    async def _commit(self) -> bool:
        """Commit what is committable; False when a commit was attempted and failed."""
        consumer = self._consumer
        if consumer is None or self.status.fatal is not None:
            return False
        async with self._commit_lock:
            offsets = self.tracker.committable()
            assigned = consumer.assignment()
            offsets = {tp: o for tp, o in offsets.items() if TopicPartition(*tp) in assigned}
            if not offsets:
                return True
            if isinstance(self.dlq, TransactionalDlq):
                written = await self.dlq.commit(offsets)
                if written is None:
                    return False  # the transaction failed (the DLQ says why); retried after the next completion
                for le in written:
                    self.metrics.dlq_messages.labels(self._g, le.headers.error_class).inc()
                    self.metrics.events.labels(self._g, le.headers.source_topic, "dlq").inc()
            else:
                try:
                    await consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})
                except KafkaError as exc:
                    self.log.warning("commit failed; will retry after the next completion", error=repr(exc))
                    return False
            self.tracker.committed(offsets)
            self.metrics.commits.labels(self._g).inc()
            return True

    async def _lag_reporter(self) -> None:
        while True:
            await asyncio.sleep(self.config.lag_interval_s)
            consumer = self._consumer
            if consumer is None:
                continue
            for tp in consumer.assignment():
                hw = consumer.highwater(tp)
                if hw is None:
                    continue
                committed: int | None = None
                with contextlib.suppress(Exception):
                    committed = await consumer.committed(tp)
                processed = self.tracker.processed_position(tp.topic, tp.partition)
                if processed is None:
                    processed = committed
                labels = (self._g, tp.topic, str(tp.partition))
                self.metrics.consumer_lag.labels(*labels).set(max(0, hw - (committed or 0)))
                self.metrics.consumer_lag_stored.labels(*labels).set(max(0, hw - (processed or 0)))

    # ---------------------------------------------------------------- rebalance / shutdown

    async def _finish_in_flight(self, grace_s: float, why: str) -> None:
        """Flush open batches, wait for all in-flight work up to ``grace_s``, then abandon the rest."""
        for batch in self.batcher.drain():
            self._launch(batch)
        tasks = set(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            if pending:
                self.log.warning("abandoning in-flight work after grace period (re-delivered to the next owner)",
                                 why=why, tasks=len(pending), grace_s=grace_s, in_flight=self.tracker.in_flight())
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

    def _forget_letters(self) -> None:
        if isinstance(self.dlq, TransactionalDlq):
            self.dlq.forget()

    async def _abandon_all(self) -> None:
        self.batcher.drain()  # never processed: re-fetched by whoever owns the partitions next
        self._forget_letters()
        tasks = set(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        self.status.rebalancing = True
        self.metrics.rebalances.labels(self._g).inc()
        started = time.monotonic()
        if self.status.fatal is None:
            await self._finish_in_flight(self.config.rebalance_grace_s, "rebalance")
            await self._commit()
        else:
            await self._abandon_all()
        self.tracker.forget()
        self._forget_letters()  # uncommitted letters: the partitions' next owner re-evaluates their messages
        self.log.info("partitions revoked", partitions=len(revoked),
                      seconds=round(time.monotonic() - started, 3))

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.status.assigned = tuple(sorted((tp.topic, tp.partition) for tp in assigned))
        self.status.joined = True
        self.status.rebalancing = False
        if self._consumer is not None:
            self._sync_pause(self._consumer)
        if self.status.fatal is None:
            self.metrics.ready.labels(self._g).set(1)
        self.log.info("partitions assigned", partitions=len(assigned))


def _offsets_by_partition(recs: list[Record]) -> dict[tuple[str, int], list[int]]:
    """The records' offsets per (topic, partition), in batch order. A batch is one model run, which
    producers key by, so it usually comes from one partition: that case builds no tuple per record."""
    if len({r[1] for r in recs}) == 1 and len({r[0] for r in recs}) == 1:
        return {(recs[0][0], recs[0][1]): [r[2] for r in recs]}
    by_tp: dict[tuple[str, int], list[int]] = {}
    for rec in recs:
        tp = (rec[0], rec[1])
        offsets = by_tp.get(tp)
        if offsets is None:
            offsets = by_tp[tp] = []
        offsets.append(rec[2])
    return by_tp


def _tp_text(offsets: dict[tuple[str, int], int]) -> str:
    return ", ".join(f"{t}/{p}@{o}" for (t, p), o in sorted(offsets.items())) or "none"


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runtime: ConsumerRuntime[Any]) -> None:
        self._rt = runtime

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._rt.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._rt.on_assigned(assigned)
