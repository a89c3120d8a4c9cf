"""API down: fetching pauses so buffered memory stays under max_buffered_bytes, nothing is
committed or dead-lettered; when the API returns, everything lands."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client import CollectorRegistry
from uploader_harness import (
    committed,
    event,
    local_labelbox,
    make_topics,
    prediction_row,
    produce,
    read_dlq,
    running_uploader,
    seed,
    settings_for,
    wait_committed,
    wait_until,
)


async def test_outage_pauses_fetching_and_bounds_memory(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    t = await make_topics(new_topic, unique_id)
    runs = [unique_id("mr") for _ in range(6)]
    n = 6000
    limit = 256 * 1024
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=runs, data_rows=[{"id": f"dr-{i}"} for i in range(50)])
        await produce(kafka_bootstrap, [
            (t.predictions, runs[i % 6].encode(),
             event(runs[i % 6], predictions=[prediction_row(f"dr-{i % 50}", "c", i)]))
            for i in range(n)
        ])
        server.add_fault({"kind": "http_error", "status": 503, "fraction": 1.0})  # the API is down
        registry = CollectorRegistry()
        settings = settings_for(kafka_bootstrap, t, server.url, max_buffered_bytes=limit, batch_max_events=200,
                                max_in_flight_batches=2)
        g = {"group": t.group}
        async with running_uploader(settings, registry) as (_, status):
            async def paused() -> bool:
                return registry.get_sample_value("runstream_fetch_paused", g) == 1

            await wait_until(paused, 30, "fetching paused")
            peak = 0.0
            for _ in range(20):  # stays paused and bounded while the outage lasts
                await asyncio.sleep(0.1)
                peak = max(peak, registry.get_sample_value("runstream_buffered_bytes", g) or 0)
            assert registry.get_sample_value("runstream_fetch_paused", g) == 1
            # one poll of overshoot at most: max_poll_records (2000) x accounted bytes per event (~1.3 KiB)
            assert 0 < peak < limit + 2000 * 1400, peak
            assert all(v is None for v in (await committed(kafka_bootstrap, t.group, [t.predictions])).values())
            retries = registry.get_sample_value("runstream_labelbox_retries_total", {"reason": "server_error"})
            assert retries and retries > 5
            assert status.fatal is None

            server.clear_faults()  # the API is back

            async def all_in() -> bool:
                total = 0
                for r in runs:
                    total += (await server.db(server.store.counts, r))["predictions"]
                return total >= n

            await wait_until(all_in, 120, "every row stored after the outage")
            await wait_committed(kafka_bootstrap, t)
            assert registry.get_sample_value("runstream_fetch_paused", g) == 0
        assert await read_dlq(kafka_bootstrap, t.dlq, expect=0, timeout=2) == []
