"""The dev broker really is Kafka: produce, consume in a group, commit, resume from the commit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


async def _produce(bootstrap: str, topic: str, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for i in range(n):
            await producer.send(topic, f"v{i}".encode(), key=f"k{i % 3}".encode(), partition=0)
        await producer.flush()
    finally:
        await producer.stop()


def _consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


async def test_topic_creation_is_visible(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]]
) -> None:
    topic = await new_topic(partitions=4)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert len(described[0]["partitions"]) == 4


async def test_restarted_consumer_resumes_from_committed_offset(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str]
) -> None:
    topic = await new_topic(partitions=1)
    group = unique_id("g")
    await _produce(kafka_bootstrap, topic, 10)
    tp = TopicPartition(topic, 0)

    first = _consumer(kafka_bootstrap, topic, group)
    await first.start()
    seen: list[bytes] = []
    try:
        while len(seen) < 4:
            batch = await first.getmany(timeout_ms=2000, max_records=4 - len(seen))
            for records in batch.values():
                seen.extend(r.value for r in records)
        await first.commit({tp: 4})
        assert await first.committed(tp) == 4
    finally:
        await first.stop()
    assert seen == [f"v{i}".encode() for i in range(4)]

    second = _consumer(kafka_bootstrap, topic, group)
    await second.start()
    rest: list[bytes] = []
    try:
        while len(rest) < 6:
            batch = await second.getmany(timeout_ms=5000)
            assert batch, "the restarted consumer received nothing"
            for records in batch.values():
                rest.extend(r.value for r in records)
    finally:
        await second.stop()
    assert rest == [f"v{i}".encode() for i in range(4, 10)]
