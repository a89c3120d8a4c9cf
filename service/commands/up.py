"""``runstream up``: the local stack on defaults (what ``make run`` starts).

With no ``RUNSTREAM_KAFKA_BOOTSTRAP`` it starts the dev broker itself. For now it proves
the path end to end with one demo event round trip; later issues grow it into the full
local run (local Labelbox API, uploader, aggregator, demo stream).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from service.config import Settings
from service.devkafka import DevKafka
from service.kafka_admin import create_topics

DEMO_EVENT = {
    "model_run_id": "demo-model-run",
    "predictions": [
        {
            "dataRow": {"globalKey": "demo-image-1"},
            "name": "cat",
            "bbox": {"top": 10, "left": 20, "height": 30, "width": 40},
            "confidence": 0.9,
            "customMetrics": [{"name": "iou", "value": 0.82}],
        }
    ],
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("up", help="run the local stack on defaults (dev broker included)")
    p.add_argument("--data-dir", type=Path, default=Path(".runstream"), help="local state (default %(default)s)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = Settings()
    broker: DevKafka | None = None
    if not settings.kafka_bootstrap:
        args.data_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        broker = DevKafka(data_dir=Path(tempfile.mkdtemp(prefix="kafka-", dir=args.data_dir)).resolve())
        broker.start()
        print(f"started Kafka {broker.version} at {broker.bootstrap} in {time.monotonic() - t0:.1f} s")
        settings = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
    try:
        asyncio.run(_round_trip(settings))
    finally:
        if broker is not None:
            broker.stop()
            print("stopped the dev broker")
    return 0


async def _round_trip(settings: Settings) -> None:
    assert settings.kafka_bootstrap is not None
    opts = settings.kafka_client_options()
    topic = settings.topic_predictions
    await create_topics(settings.kafka_bootstrap, [topic, settings.topic_dlq], partitions=3, **opts)
    value = orjson.dumps(DEMO_EVENT)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True, **opts)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, value, key=b"demo-model-run")
    finally:
        await producer.stop()
    print(f"produced a demo prediction event to {topic}[{meta.partition}]@{meta.offset}")

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id="runstream-demo",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **opts,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                for record in records:
                    if record.offset == meta.offset and tp.partition == meta.partition:
                        await consumer.commit({tp: record.offset + 1})
                        print(f"consumed it back and committed offset {record.offset + 1}: {record.value!r}")
                        return
        raise TimeoutError("the demo event did not come back within 30 s")
    finally:
        await consumer.stop()
