"""A read-only view of the dead-letter topic for the API and dashboard.

Process-local Prometheus counters only see one replica's DLQ writes; operators want the
topic's truth. The monitor assigns every DLQ partition (no consumer group, nothing
committed), reads from the beginning and keeps counts by error class plus the most
recent entries. Memory is bounded by ``keep_recent``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from consumers.dlq.headers import DlqHeaders
from service.config import Settings
from service.errors import DlqHeaderError
from service.kafka import KafkaEndpoint, make_consumer, start_client
from service.labelbox.run_verdicts import ERROR_CLASS as MODEL_RUN_CLASS
from service.labelbox.run_verdicts import run_of_message

MAX_REJECTED_RUNS = 100


@dataclass(frozen=True, slots=True)
class DlqEntry:
    offset: int
    partition: int
    error_class: str
    message: str
    source: str
    failed_at: datetime | None


@dataclass
class DlqStats:
    """Pure accumulator: fold DLQ records into counts and a bounded recent list."""

    keep_recent: int = 50

    def __post_init__(self) -> None:
        self.by_class: Counter[str] = Counter()
        self.recent: deque[DlqEntry] = deque(maxlen=self.keep_recent)
        # model runs Labelbox rejected: run -> (messages, latest entry), most recent last
        self.rejected_runs: OrderedDict[str, tuple[int, DlqEntry]] = OrderedDict()

    def add(self, partition: int, offset: int, headers: list[tuple[str, bytes | None]] | None) -> None:
        try:
            h = DlqHeaders.from_kafka(headers)
        except DlqHeaderError as exc:
            self.by_class["unknown"] += 1
            self.recent.append(DlqEntry(offset, partition, "unknown", f"unreadable DLQ headers: {exc}", "?", None))
            return
        self.by_class[h.error_class] += 1
        source = f"{h.source_topic}[{h.source_partition}]@{h.source_offset}"
        entry = DlqEntry(offset, partition, h.error_class, h.error_message, source, h.failed_at)
        self.recent.append(entry)
        if h.error_class == MODEL_RUN_CLASS and (run := run_of_message(h.error_message)) is not None:
            n = self.rejected_runs.pop(run, (0, entry))[0]
            self.rejected_runs[run] = (n + 1, entry)
            if len(self.rejected_runs) > MAX_REJECTED_RUNS:
                self.rejected_runs.popitem(last=False)

    def snapshot(self) -> dict[str, object]:
        return {
            "total": sum(self.by_class.values()),
            "by_class": dict(sorted(self.by_class.items())),
            "recent": [
                {
                    "error_class": e.error_class,
                    "message": e.message,
                    "source": e.source,
                    "dlq_partition": e.partition,
                    "dlq_offset": e.offset,
                    "failed_at": e.failed_at.isoformat() if e.failed_at else None,
                }
                for e in reversed(self.recent)
            ],
            "rejected_model_runs": [
                {"model_run_id": run, "messages": n, "reason": e.message,
                 "last_at": e.failed_at.isoformat() if e.failed_at else None}
                for run, (n, e) in reversed(self.rejected_runs.items())
            ],
        }


class DlqMonitor:
    """``start()`` begins tailing the DLQ in a task; ``stats`` is always current; ``stop()`` ends it."""

    def __init__(self, settings: Settings, keep_recent: int = 50) -> None:
        self._settings = settings
        self.stats = DlqStats(keep_recent)
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        # read_committed: letters of an aborted uploader transaction were never dead letters.
        endpoint = KafkaEndpoint.from_settings(self._settings)
        consumer = make_consumer(endpoint, isolation_level="read_committed")
        await start_client(consumer, endpoint, "DLQ monitor")
        self._consumer = consumer
        self._task = asyncio.create_task(self._tail(consumer), name="dlq-monitor")

    async def _tail(self, consumer: AIOKafkaConsumer) -> None:
        topic = self._settings.topic_dlq
        assigned: set[TopicPartition] = set()
        while True:
            if not assigned:
                if topic not in await consumer.topics():  # no DLQ yet: nothing has failed
                    await asyncio.sleep(1.0)
                    continue
                first = TopicPartition(topic, 0)
                consumer.assign([first])  # makes the topic's metadata tracked by the client
                await consumer.seek_to_beginning(first)
                assigned = {first}
            parts = consumer.partitions_for_topic(topic) or set()
            wanted = {TopicPartition(topic, p) for p in parts} | assigned
            if wanted != assigned:  # metadata arrived, or the topic grew
                positions = {tp: await consumer.position(tp) for tp in assigned}
                consumer.assign(sorted(wanted))
                for tp, pos in positions.items():
                    consumer.seek(tp, pos)
                await consumer.seek_to_beginning(*(wanted - assigned))
                assigned = wanted
            batch = await consumer.getmany(timeout_ms=1000, max_records=1000)
            for tp, records in batch.items():
                for r in records:
                    self.stats.add(tp.partition, r.offset, list(r.headers))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
