"""Small real-broker helpers shared by the test harnesses: produce in order, read end offsets."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


async def produce(bootstrap: str, msgs: list[tuple[str, bytes | None, bytes | None]]) -> None:
    """(topic, key, value) in order; acks=all."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await p.start()
    try:
        futs = [await p.send(t, value=v, key=k) for t, k, v in msgs]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def end_offsets(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """Log-end offset of every partition of the topics (fails if a topic has no metadata)."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await c.start()
    try:
        cluster = await c._client.fetch_all_metadata()  # partitions_for_topic() knows subscribed topics only
        tps = [TopicPartition(t, p) for t in topics for p in sorted(cluster.partitions_for_topic(t) or ())]
        assert len({tp.topic for tp in tps}) == len(topics), f"no metadata for {topics}"
        ends = await c.end_offsets(tps)
        return {(tp.topic, tp.partition): o for tp, o in ends.items()}
    finally:
        await c.stop()
