"""Regression test for a bug the drill (bench/drill.py) found: two batches of one model run in
flight at once could land at Labelbox out of order, so an earlier version of a metric (or of a
prediction re-sent with the same uuid) overwrote the later one — Labelbox upserts, the last import
wins. The uploader runs as a real process (``python -m runstream run --role uploader``)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiokafka.errors import GroupCoordinatorNotAvailableError
from uploader_harness import (
    event,
    local_labelbox,
    make_topics,
    produce,
    seed,
    settings_env,
    settings_for,
    wait_committed,
)

from devstack.kafka_broker import free_port

ROOT = Path(__file__).resolve().parents[2]


async def test_batches_of_one_model_run_land_in_offset_order(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    t = await make_topics(new_topic, unique_id, partitions=1)
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=["mr"], data_rows=[{"id": "d1"}])
        await server.db(server.store.register_data_rows, "mr", ["d1"], None)
        # The first import creation is slow; a second batch of the same run must wait for it.
        server.add_fault({"kind": "latency", "latencyMs": 1500, "count": 1,
                          "operations": ["createModelErrorAnalysisPredictionImport"]})  # fmt: skip
        metric = {"dataRow": {"id": "d1"}, "metricName": "acc", "aggregation": "ARITHMETIC_MEAN"}
        await produce(kafka_bootstrap, [
            (t.metrics, b"mr", event("mr", metrics=[{**metric, "metricValue": 0.1}])),
            (t.metrics, b"mr", event("mr", metrics=[{**metric, "metricValue": 0.9}])),
        ])  # fmt: skip
        s = settings_for(kafka_bootstrap, t, server.url, batch_max_events=1, batch_linger_ms=0)
        env = {**os.environ, **settings_env(s), "RUNSTREAM_HTTP_PORT": str(free_port()), "PYTHONPATH": str(ROOT)}
        with (tmp_path / "uploader.log").open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runstream", "run", "--role", "uploader", cwd=str(ROOT), env=env,
                stdout=log, stderr=log,
            )  # fmt: skip
        try:
            for _ in range(300):  # the group exists only once the process has joined
                try:
                    await wait_committed(kafka_bootstrap, t, timeout=60)
                    break
                except GroupCoordinatorNotAvailableError:
                    await asyncio.sleep(0.2)
            await server.wait_for_imports()
        finally:
            proc.terminate()
            await proc.wait()
        stored = await server.db(server.store.metrics, "mr")
        assert [m["metricValue"] for m in stored] == [0.9], stored
