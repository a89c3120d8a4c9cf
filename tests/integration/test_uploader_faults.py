"""Injected API faults (5xx bursts, 429 with Retry-After, latency, connection resets, an
import that ends FAILED): every event still lands exactly once, nothing is dead-lettered,
and the retries are visible in the metrics. Also: bad credentials stop the pipeline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from uploader_harness import (
    committed,
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

from consumers.runtime import FatalPipelineError, RuntimeStatus


async def test_faults_are_retried_and_everything_lands_once(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    t = await make_topics(new_topic, unique_id)
    runs = [unique_id("mr") for _ in range(3)]
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=runs, data_rows=[{"id": f"dr-{i}"} for i in range(30)])
        server.add_fault({"kind": "http_error", "status": 503, "count": 6})
        server.add_fault({"kind": "rate_limit", "retryAfter": 1, "count": 3})
        server.add_fault({"kind": "reset", "count": 3})
        server.add_fault({"kind": "latency", "latencyMs": 150, "fraction": 0.3})
        server.add_fault({"kind": "import_failed", "count": 2})
        msgs: list[tuple[str, bytes | None, bytes | None]] = []
        for i in range(300):
            mr = runs[i % 3]
            msgs.append((t.predictions, mr.encode(), event(mr, predictions=[prediction_row(f"dr-{i % 30}", "c", i)])))
            if i % 2 == 0:
                msgs.append((t.metrics, mr.encode(), event(mr, metrics=[metric_row(f"dr-{i % 30}", f"m{i}")])))
        await produce(kafka_bootstrap, msgs)
        registry = CollectorRegistry()
        started = time.monotonic()
        async with running_uploader(settings_for(kafka_bootstrap, t, server.url), registry):
            async def all_in() -> bool:
                total = 0
                for r in runs:
                    c = await server.db(server.store.counts, r)
                    total += c["predictions"] + c["metrics"]
                return total >= 450

            await wait_until(all_in, 120, "all rows stored despite faults")
            await wait_committed(kafka_bootstrap, t)
        for r in runs:
            c = await server.db(server.store.counts, r)
            assert c["predictions"] == 100 and c["metrics"] == 50, c
        assert await read_dlq(kafka_bootstrap, t.dlq, expect=0, timeout=2) == []
        retries = {
            reason: registry.get_sample_value("runstream_labelbox_retries_total", {"reason": reason}) or 0
            for reason in ("server_error", "rate_limit", "network", "import_failed")
        }
        assert retries["server_error"] >= 1 and retries["rate_limit"] >= 1, retries
        assert retries["network"] >= 1 and retries["import_failed"] >= 2, retries
        # Retry-After: 1 s was honoured three times (the 429s hit sequential calls or parallel ones)
        assert time.monotonic() - started >= 1.0


async def test_bad_credentials_commit_nothing_and_dlq_nothing(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    t = await make_topics(new_topic, unique_id)
    mr = unique_id("mr")
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=[mr], data_rows=[{"id": "dr-0"}])
        await produce(kafka_bootstrap, [
            (t.predictions, mr.encode(), event(mr, predictions=[prediction_row("dr-0", "c", 1)])),
            (t.predictions, mr.encode(), b"not json"),  # would be DLQ'd by a working pipeline
        ])
        stop = asyncio.Event()
        status = RuntimeStatus()
        from consumers.uploader import run_uploader

        settings = settings_for(kafka_bootstrap, t, server.url, api_key="wrong-key-123456")
        task = asyncio.create_task(run_uploader(settings, stop, status=status))
        await wait_until(lambda: _true(status.fatal is not None), 30, "fatal state")
        assert not status.ready
        await asyncio.sleep(1.0)
        assert not task.done()  # stays up, unready, until stopped
        stop.set()
        with pytest.raises(FatalPipelineError):
            await task
        assert "wrong-key-123456" not in (status.fatal or "")
        got = await committed(kafka_bootstrap, t.group, [t.predictions, t.metrics, t.labels])
        assert all(v is None for v in got.values()), got
        assert await read_dlq(kafka_bootstrap, t.dlq, expect=0, timeout=2) == []
        assert (await server.db(server.store.counts, mr))["predictions"] == 0


async def test_credentials_revoked_mid_stream_stop_the_pipeline(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    t = await make_topics(new_topic, unique_id)
    mr = unique_id("mr")
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=[mr], data_rows=[{"id": "dr-0"}])
        status = RuntimeStatus()
        async with running_uploader(settings_for(kafka_bootstrap, t, server.url), status=status):
            await wait_until(lambda: _true(status.ready), 30, "ready")
            server.add_fault({"kind": "auth", "fraction": 1.0})
            await produce(kafka_bootstrap, [
                (t.predictions, mr.encode(), event(mr, predictions=[prediction_row("dr-0", "c", 1)])),
                (t.predictions, mr.encode(), b"not json"),
            ])
            await wait_until(lambda: _true(status.fatal is not None), 30, "fatal state")
            assert not status.ready
        got = await committed(kafka_bootstrap, t.group, [t.predictions])
        assert all(v is None for v in got.values()), got


async def _true(v: bool) -> bool:
    return v


async def test_import_that_always_fails_is_bisected_and_dead_lettered(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    t = await make_topics(new_topic, unique_id, partitions=1)
    mr = unique_id("mr")
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=[mr], data_rows=[{"id": "dr-0"}])
        await produce(kafka_bootstrap, [
            (t.predictions, mr.encode(), event(mr, predictions=[prediction_row("dr-0", "c", i)])) for i in range(2)
        ])
        server.add_fault({"kind": "import_failed", "fraction": 1.0})
        async with running_uploader(settings_for(kafka_bootstrap, t, server.url)) as (_, status):
            await wait_committed(kafka_bootstrap, t)
            assert status.fatal is None
        dlq = await read_dlq(kafka_bootstrap, t.dlq, expect=2)
        assert len(dlq) == 2
        assert all(h.error_class == "labelbox.rejected" and "ended FAILED" in h.error_message for _, _, h in dlq)


async def test_one_topic_for_two_roles_is_a_config_error(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    from consumers.uploader import run_uploader
    from service.errors import ConfigError

    t = await make_topics(new_topic, unique_id)
    settings = settings_for(kafka_bootstrap, t, "http://127.0.0.1:9/graphql", topic_labels=t.predictions)
    with pytest.raises(ConfigError, match="four different topics"):
        await run_uploader(settings, asyncio.Event())
