"""A service process started while the broker is restarting waits for the broker instead of exiting at
once (``KafkaConnectionError: Unable to bootstrap``, exit 1), a case the drill (bench/drill.py) exercises.
Both roles run as real processes (``python -m runstream run --role ...``) against a broker that comes up
only a few seconds after them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from uploader_harness import API_KEY, local_labelbox, seed

from devstack.kafka_broker import DevKafka, free_port

ROOT = Path(__file__).resolve().parents[2]
TOPICS = {"RUNSTREAM_TOPIC_PREDICTIONS": "p", "RUNSTREAM_TOPIC_METRICS": "m", "RUNSTREAM_TOPIC_LABELS": "l",
          "RUNSTREAM_TOPIC_DLQ": "d"}  # fmt: skip


def _spawn(role: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "runstream", "run", "--role", role], cwd=ROOT,
            env={**os.environ, **TOPICS, **env, "PYTHONPATH": str(ROOT)}, stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip


async def test_processes_started_before_the_broker_wait_for_it(tmp_path: Path) -> None:
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    agg_port = free_port()
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=["mr"], data_rows=[{"id": "d1"}])
        common = {"RUNSTREAM_KAFKA_BOOTSTRAP": bootstrap}
        up = _spawn("uploader", common | {"RUNSTREAM_LABELBOX_URL": server.url, "RUNSTREAM_LABELBOX_API_KEY": API_KEY,
                                          "RUNSTREAM_HTTP_PORT": str(free_port())}, tmp_path / "up.log")  # fmt: skip
        agg = _spawn("aggregator", common | {"RUNSTREAM_STATE_SQLITE_PATH": str(tmp_path / "state.sqlite3"),
                                             "RUNSTREAM_HTTP_PORT": str(agg_port)}, tmp_path / "agg.log")  # fmt: skip
        kafka = DevKafka(tmp_path / "kafka", broker_port=port)
        try:
            await asyncio.sleep(4)  # both are trying to bootstrap against nothing
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            assert agg.poll() is None, (tmp_path / "agg.log").read_text()[-3000:]
            await asyncio.to_thread(kafka.start)
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
            await admin.start()
            try:
                await admin.create_topics([NewTopic(t, 1, 1) for t in TOPICS.values()])
            finally:
                await admin.close()
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
            await producer.start()
            try:
                row = {"uuid": "0b9e4a0c-3f5e-4d3a-9c57-7e1c2a9b1f10", "dataRow": {"id": "d1"}, "name": "cat",
                       "bbox": {"top": 1, "left": 2, "height": 3, "width": 4},
                       "customMetrics": [{"name": "cm_iou", "value": 0.5}]}  # fmt: skip
                await producer.send_and_wait("p", orjson.dumps({"model_run_id": "mr", "predictions": [row]}), key=b"mr")
            finally:
                await producer.stop()
            deadline = time.monotonic() + 90
            stored, aggregated = 0, False
            async with aiohttp.ClientSession() as s:
                while time.monotonic() < deadline and not (stored and aggregated):
                    stored = (await server.db(server.store.counts, "mr"))["predictions"]
                    try:
                        async with s.get(f"http://127.0.0.1:{agg_port}/v1/model-runs/mr/metrics") as r:
                            aggregated = r.status == 200
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.5)
            assert up.poll() is None and agg.poll() is None
            assert stored == 1 and aggregated, ((tmp_path / "up.log").read_text()[-2000:],
                                                (tmp_path / "agg.log").read_text()[-2000:])  # fmt: skip
        finally:
            for p in (up, agg):
                p.terminate()
            for p in (up, agg):
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
            await asyncio.to_thread(kafka.stop)
