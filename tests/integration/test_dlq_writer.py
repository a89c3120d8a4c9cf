"""DlqWriter: original bytes unchanged, headers readable, send returns only after the ack."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from uploader_harness import read_dlq

from consumers.dlq import DlqWriter
from consumers.dlq.headers import DlqHeaders


async def test_send_keeps_bytes_and_headers(kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]]) -> None:
    topic = await new_topic(partitions=1, prefix="dlq")
    raw = b"\xff\x00 not json at all \x00"
    async with DlqWriter(kafka_bootstrap, topic) as dlq:
        await dlq.send(b"mr-1", raw, DlqHeaders(error_class="json", error_message="value: not valid JSON",
                                                source_topic="src", source_partition=2, source_offset=41,
                                                consumer_group="g"))
        await dlq.send(None, None, DlqHeaders(error_class="schema", error_message="tombstone",
                                              source_topic="src", source_partition=0, source_offset=0,
                                              consumer_group="g"))
    got = await read_dlq(kafka_bootstrap, topic, expect=2)
    assert [(k, v) for k, v, _ in got] == [(b"mr-1", raw), (None, b"")]  # null+null cannot be produced
    h = got[0][2]
    assert (h.error_class, h.source_topic, h.source_partition, h.source_offset, h.consumer_group) == (
        "json", "src", 2, 41, "g")
    assert h.error_message == "value: not valid JSON"
