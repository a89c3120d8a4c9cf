"""Re-publish dead-lettered messages to their source topics (``runstream dlq replay``).

Once the cause is fixed (a data row registered, a producer corrected, credentials
renewed), the DLQ'd messages can go back through the pipeline. The scan covers the DLQ
from its beginning up to its end at start time (a snapshot, so messages that fail again
and are re-dead-lettered during the replay are not replayed in a loop). Replaying twice
is harmless: prediction uuids and metric upsert keys make imports idempotent.

Original key and value bytes are sent unchanged; a ``runstream.replay.dlq.offset`` header
records where the copy came from. A truncated letter (``runstream.original.size`` set: the
original did not fit the DLQ topic) is refused, never replayed: its value is only a prefix.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

from aiokafka import TopicPartition

from consumers.dlq.headers import DlqHeaders
from service.config import Settings
from service.errors import ConfigError, DlqHeaderError
from service.kafka import KafkaEndpoint, make_admin, make_consumer, make_producer, start_client


@dataclass
class ReplayStats:
    scanned: int = 0
    replayed: Counter[str] = field(default_factory=Counter)  # error class -> count
    skipped: int = 0
    unreadable: int = 0
    truncated: int = 0  # refused: only a prefix of the original value is stored

    @property
    def total_replayed(self) -> int:
        return sum(self.replayed.values())


async def replay(
    settings: Settings,
    *,
    error_classes: set[str] | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    out: TextIO | None = None,
) -> ReplayStats:
    """Scan the DLQ snapshot and re-publish matching messages; waits for every ack."""
    endpoint = KafkaEndpoint.from_settings(settings)
    topic = settings.topic_dlq
    admin = make_admin(endpoint)
    await start_client(admin, endpoint, "DLQ replay admin")
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    parts = [TopicPartition(topic, p["partition"]) for d in described for p in d.get("partitions", [])]
    if not parts:
        raise ConfigError(f"DLQ topic {topic!r} does not exist")
    stats = ReplayStats()
    # read_committed: letters of an aborted uploader transaction are not dead letters.
    consumer = make_consumer(endpoint, isolation_level="read_committed")
    producer = make_producer(endpoint, linger_ms=0)
    await start_client(consumer, endpoint, "DLQ replay consumer")
    try:
        await start_client(producer, endpoint, "DLQ replay producer")
    except BaseException:
        await consumer.stop()
        raise
    try:
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        remaining = {tp for tp in parts if ends[tp] > 0}
        pending: list[asyncio.Future[object]] = []
        while remaining and (limit is None or stats.total_replayed < limit):
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for r in records:
                    if r.offset >= ends[tp]:
                        remaining.discard(tp)
                        break
                    if r.offset == ends[tp] - 1:
                        remaining.discard(tp)
                    stats.scanned += 1
                    if limit is not None and stats.total_replayed >= limit:
                        remaining.clear()
                        break
                    try:
                        h = DlqHeaders.from_kafka(r.headers)
                    except DlqHeaderError as exc:
                        stats.unreadable += 1
                        if out:
                            print(f"skip {tp.partition}/{r.offset}: {exc}", file=out)
                        continue
                    if error_classes and h.error_class not in error_classes:
                        stats.skipped += 1
                        continue
                    if h.truncated:
                        stats.truncated += 1
                        if out:
                            print(f"refuse {tp.partition}/{r.offset}: truncated dead letter — only "
                                  f"{len(r.value or b'')} of its {h.original_size} bytes are stored "
                                  f"(sha256 {h.original_sha256}); re-send the original from its producer",
                                  file=out)
                        continue
                    stats.replayed[h.error_class] += 1
                    if out:
                        print(f"{'would replay' if dry_run else 'replay'} {tp.partition}/{r.offset} → "
                              f"{h.source_topic} [{h.error_class}] {h.error_message[:120]}", file=out)
                    if not dry_run:
                        pending.append(await producer.send(
                            h.source_topic, key=r.key, value=r.value,
                            headers=[("runstream.replay.dlq.offset", f"{tp.partition}/{r.offset}".encode())],
                        ))
            for tp in list(remaining):  # gaps (compaction, markers) never show the last offset
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            if len(pending) > 1000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
        await consumer.stop()
    return stats
