"""Uploader end to end: real broker, real local Labelbox API (no mocks)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry
from uploader_harness import (
    event,
    local_labelbox,
    make_topics,
    metric_row,
    prediction_row,
    produce,
    read_dlq,
    running_uploader,
    seed,
    settings_for,
    wait_committed,
    wait_until,
)


async def test_events_across_runs_and_partitions_all_land(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    t = await make_topics(new_topic, unique_id)
    runs = [unique_id("mr") for _ in range(4)]
    drs = [{"id": f"dr-{i}", "globalKey": f"gk-{i}"} for i in range(40)]
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=runs, data_rows=drs, projects=[{"id": "proj-1"}],
                   labels=[{"id": f"lab-{i}", "projectId": "proj-1", "dataRowId": f"dr-{i}"} for i in range(6)])
        msgs: list[tuple[str, bytes | None, bytes | None]] = []
        expected_preds: dict[str, int] = {r: 0 for r in runs}
        expected_metrics: dict[str, int] = {r: 0 for r in runs}
        for i in range(400):
            mr = runs[i % len(runs)]
            rows = [prediction_row(f"dr-{(i + j) % 40}", "cat", i * 3 + j) for j in range(2)]
            msgs.append((t.predictions, mr.encode(), event(mr, predictions=rows)))
            expected_preds[mr] += 2
            if i % 2 == 0:
                m = [metric_row(f"dr-{i % 40}", f"m{i}", 0.25)]
                msgs.append((t.metrics, mr.encode(), event(mr, metrics=m)))
                expected_metrics[mr] += 1
        # label registrations: duplicated label ids coalesce into one task; a project; global keys
        msgs.append((t.labels, runs[0].encode(), event(runs[0], label_ids=["lab-0", "lab-1"])))
        msgs.append((t.labels, runs[0].encode(), event(runs[0], label_ids=["lab-1", "lab-2"])))
        msgs.append((t.labels, runs[1].encode(), event(runs[1], project_id="proj-1")))
        msgs.append((t.labels, runs[2].encode(), event(runs[2], global_keys=["gk-39"])))
        await produce(kafka_bootstrap, msgs)

        registry = CollectorRegistry()
        settings = settings_for(kafka_bootstrap, t, server.url)
        async with running_uploader(settings, registry) as (task, status):
            async def all_in() -> bool:
                for r in runs:
                    c = await server.db(server.store.counts, r)
                    if c["predictions"] < expected_preds[r] or c["metrics"] < expected_metrics[r]:
                        return False
                return True

            await wait_until(all_in, 90, "all rows stored")
            await wait_committed(kafka_bootstrap, t)
            assert status.ready

            async def lag_zero() -> bool:  # per-partition lag gauges (reported every 5 s)
                values = [registry.get_sample_value(name, {"group": t.group, "topic": t.predictions,
                                                           "partition": str(p)})
                          for p in range(3) for name in ("runstream_consumer_lag", "runstream_consumer_lag_stored")]
                return all(v == 0 for v in values)

            await wait_until(lag_zero, 15, "lag gauges at 0")
        assert task.done() and task.exception() is None

        for r in runs:
            c = await server.db(server.store.counts, r)
            assert c["predictions"] == expected_preds[r], (r, c)  # upserted by uuid: exactly once
            assert c["metrics"] == expected_metrics[r], (r, c)
        members = {m["labelId"] for m in await server.db(server.store.run_data_rows, runs[0]) if m["labelId"]}
        assert {"lab-0", "lab-1", "lab-2"} <= members
        members1 = {m["labelId"] for m in await server.db(server.store.run_data_rows, runs[1]) if m["labelId"]}
        assert members1 == {f"lab-{i}" for i in range(6)}
        gks = {m["globalKey"] for m in await server.db(server.store.run_data_rows, runs[2])}
        assert "gk-39" in gks
        assert await read_dlq(kafka_bootstrap, t.dlq, expect=0, timeout=2) == []
        sample = (await server.db(server.store.predictions, runs[0]))[0]["row"]
        assert sample["customMetrics"] and sample["bbox"]
        delivered = registry.get_sample_value(
            "runstream_events_total", {"group": t.group, "topic": t.predictions, "outcome": "delivered"})
        assert delivered == 400
        assert orjson.dumps(sample)
