"""The DLQ monitor counts what is really on the DLQ topic, including partitions it found late."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaProducer

from consumers.dlq.headers import DlqHeaders
from consumers.dlq.monitor import DlqMonitor
from service.config import Settings


def _headers(error_class: str, offset: int) -> list[tuple[str, bytes]]:
    return DlqHeaders(
        error_class=error_class,
        error_message=f"metrics[0].value: broken {offset}",
        source_topic="runstream.metrics",
        source_partition=0,
        source_offset=offset,
        consumer_group="runstream-uploader",
    ).to_kafka()


async def _until(predicate: Callable[[], bool], within_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def test_monitor_counts_by_class(kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]]) -> None:
    dlq = await new_topic(partitions=2, prefix="dlq")
    settings = Settings(_env_file=None, kafka_bootstrap=kafka_bootstrap, topic_dlq=dlq)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i, cls in enumerate(["schema", "schema", "json", "too_large"]):
            await producer.send_and_wait(dlq, b"orig", key=b"k", partition=i % 2, headers=_headers(cls, i))
        await producer.send_and_wait(dlq, b"no headers", partition=0)
        monitor = DlqMonitor(settings, keep_recent=3)
        await monitor.start()
        try:
            await _until(lambda: monitor.stats.snapshot()["total"] == 5)
            snap = monitor.stats.snapshot()
            assert snap["by_class"] == {"json": 1, "schema": 2, "too_large": 1, "unknown": 1}
            recent = snap["recent"]
            assert isinstance(recent, list) and len(recent) == 3
            # later writes keep arriving
            await producer.send_and_wait(dlq, b"x", partition=1, headers=_headers("labelbox.row_failed", 9))
            await _until(lambda: monitor.stats.snapshot()["total"] == 6)
            assert monitor.stats.by_class["labelbox.row_failed"] == 1
        finally:
            await monitor.stop()
    finally:
        await producer.stop()
