"""The aggregator's per-batch accounting: applied, skipped (unparseable) and dead-lettered messages."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import NamedTuple

import orjson
from aiokafka import TopicPartition

from consumers.aggregator import Aggregator
from service.config import Settings
from service.state import SqlStateBackend


class Rec(NamedTuple):
    """The fields of an aiokafka ConsumerRecord the batch step reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


def test_only_unparseable_messages_count_as_invalid(tmp_path: Path) -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:9")
    backend = SqlStateBackend.sqlite(tmp_path / "state.sqlite3")
    try:
        agg = Aggregator(settings, backend)
        topic = settings.topic_metrics
        agg.checkpoint.assigned.add((topic, 0))
        good = orjson.dumps(
            {
                "model_run_id": "run-1",
                "metrics": [
                    {"data_row": {"id": "dr1"}, "metric_name": "score", "value": 0.5, "aggregation": "ARITHMETIC_MEAN"}
                ],
            }
        )
        batch = {
            TopicPartition(topic, 0): [
                Rec(topic, 0, 0, b"run-1", good),
                Rec(topic, 0, 1, b"run-1", b"not json"),
                Rec(topic, 0, 2, b"run-1", good),
            ]
        }
        asyncio.run(agg._process(batch))
        assert (agg.stats.invalid, agg.stats.rejected) == (1, 0)
        assert agg.checkpoint.positions[(topic, 0)] == 3
    finally:
        backend.close()
