"""RunstreamProducer against the real broker: valid events, keyed by model run; bad ones never leave."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from test_backfill_kafka import drain, topics_settings

from service.config import Settings
from service.errors import EventValidationError
from service.events import LabelEvent, MetricEvent, PredictionEvent, parse_event
from service.producer import ProducerError, RunstreamProducer

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "PRODUCER.md"


async def end_offsets(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        offsets = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return sum(offsets.values())
    finally:
        await consumer.stop()


async def test_emits_valid_keyed_events(kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]]) -> None:
    settings = await topics_settings(kafka_bootstrap, new_topic)
    rows = [{"dataRow": {"globalKey": f"img-{i}"}, "name": "cat", "point": {"x": i, "y": 0}} for i in range(7)]
    async with RunstreamProducer(settings, max_rows_per_event=3) as p:
        assert await p.emit_predictions("mr-1", rows) == 3
        assert await p.emit_metrics("mr-2", [{"data_row": {"id": "d"}, "metric_name": "acc", "value": 0.5}]) == 1
        await p.upsert_labels("mr-1", project_id="proj-1")
        await p.upsert_data_rows("mr-2", global_keys=["img-0", "img-1"])
        await p.flush()
        assert p.events_sent == 6

    preds = await drain(kafka_bootstrap, settings.topic_predictions)
    assert {k for k, _ in preds} == {b"mr-1"}
    parsed = [parse_event("prediction", v, max_bytes=1 << 20) for _, v in preds]
    assert all(isinstance(e, PredictionEvent) for e in parsed)
    # one key, one partition: order is kept
    assert [r.data_row.global_key for e in parsed for r in e.predictions] == [f"img-{i}" for i in range(7)]  # type: ignore[union-attr]
    ((key, value),) = await drain(kafka_bootstrap, settings.topic_metrics)
    assert key == b"mr-2" and isinstance(parse_event("metric", value, max_bytes=1 << 20), MetricEvent)
    labels = await drain(kafka_bootstrap, settings.topic_labels)
    evs = [parse_event("label", v, max_bytes=1 << 20) for _, v in labels]
    assert all(isinstance(e, LabelEvent) for e in evs)
    got = sorted(
        (k, e.project_id or ",".join(e.global_keys or []))  # type: ignore[union-attr]
        for (k, _), e in zip(labels, evs, strict=True)
    )
    assert got == [(b"mr-1", "proj-1"), (b"mr-2", "img-0,img-1")]


async def test_invalid_rows_raise_and_nothing_is_sent(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]]
) -> None:
    settings = await topics_settings(kafka_bootstrap, new_topic)
    async with RunstreamProducer(settings) as p:
        with pytest.raises(EventValidationError) as err:
            await p.emit_metrics(
                "mr-1",
                [
                    {"data_row": {"id": "d"}, "metric_name": "ok", "value": 1.0},
                    {"data_row": {"id": "d"}, "metric_name": "ok2", "value": float("inf")},
                ],
            )
        assert err.value.field == "metrics[1].value"
        with pytest.raises(EventValidationError):
            await p.upsert_labels("mr-1", label_ids=["a"], project_id="p")
    assert await end_offsets(kafka_bootstrap, settings.topic_metrics) == 0
    assert await end_offsets(kafka_bootstrap, settings.topic_labels) == 0


async def test_using_a_producer_that_is_not_started_is_an_error(kafka_bootstrap: str) -> None:
    p = RunstreamProducer(Settings(kafka_bootstrap=kafka_bootstrap))
    with pytest.raises(ProducerError):
        await p.upsert_labels("mr", label_ids=["l"])


async def test_the_documented_example_runs(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], tmp_path: Path
) -> None:
    """docs/PRODUCER.md's example, run as written against the broker: it must stay true."""
    settings = await topics_settings(kafka_bootstrap, new_topic)
    doc = DOC.read_text(encoding="utf-8")
    example = doc.split("```python", 1)[1].split("```", 1)[0]
    script = tmp_path / "example.py"
    script.write_text(example, encoding="utf-8")
    env = {
        **os.environ,
        "RUNSTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "RUNSTREAM_TOPIC_PREDICTIONS": settings.topic_predictions,
        "RUNSTREAM_TOPIC_METRICS": settings.topic_metrics,
        "RUNSTREAM_TOPIC_LABELS": settings.topic_labels,
        "PYTHONPATH": str(REPO),
    }
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("schema metrics[0].metric_name 'f1' is a reserved metric name")
    assert len(await drain(kafka_bootstrap, settings.topic_predictions)) == 1
    assert len(await drain(kafka_bootstrap, settings.topic_metrics)) == 1
    assert len(await drain(kafka_bootstrap, settings.topic_labels)) == 2
