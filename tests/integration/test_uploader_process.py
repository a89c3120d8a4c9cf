"""The uploader as a real process: kill -9 mid-stream then restart, SIGTERM shutdown
(exit 0, offsets committed), and two processes in one group with rebalances."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from uploader_harness import (
    Topics,
    committed,
    end_offsets,
    event,
    local_labelbox,
    make_topics,
    prediction_row,
    produce,
    read_dlq,
    seed,
    settings_env,
    settings_for,
    wait_committed,
    wait_until,
)

from devstack.local_labelbox import LocalLabelbox

ROOT = Path(__file__).resolve().parents[2]


async def spawn(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    fh = log.open("ab")
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "consumers.uploader", cwd=str(ROOT), env=full,
                                                stdout=fh, stderr=fh)


async def total_predictions(server: LocalLabelbox, runs: list[str]) -> int:
    return sum([(await server.db(server.store.counts, r))["predictions"] for r in runs])


async def produce_stream(bootstrap: str, t: Topics, runs: list[str], start: int, n: int, per_sec: float) -> None:
    chunk = max(1, int(per_sec / 10))
    for i in range(start, start + n, chunk):
        msgs: list[tuple[str, bytes | None, bytes | None]] = []
        for j in range(i, min(i + chunk, start + n)):
            mr = runs[j % len(runs)]
            msgs.append((t.predictions, mr.encode(), event(mr, predictions=[prediction_row(f"dr-{j % 50}", "c", j)])))
        await produce(bootstrap, msgs)
        await asyncio.sleep(0.1)


async def test_kill_9_mid_stream_then_restart_loses_nothing(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    t = await make_topics(new_topic, unique_id)
    runs = [unique_id("mr") for _ in range(3)]
    n = 3000
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=runs, data_rows=[{"id": f"dr-{i}"} for i in range(50)])
        server.add_fault({"kind": "latency", "latencyMs": 50, "fraction": 0.5})
        env = settings_env(settings_for(kafka_bootstrap, t, server.url, batch_max_events=200))
        producer = asyncio.create_task(produce_stream(kafka_bootstrap, t, runs, 0, n, per_sec=1500))
        proc = await spawn(env, tmp_path / "uploader.log")
        await wait_until(lambda: _gt(total_predictions(server, runs), 300), 60, "some rows stored")
        proc.kill()  # SIGKILL: no cleanup, no commit
        assert await proc.wait() == -signal.SIGKILL
        await producer
        proc = await spawn(env, tmp_path / "uploader.log")
        try:
            await wait_until(lambda: _ge(total_predictions(server, runs), n), 120, "every row stored after restart")
            await wait_committed(kafka_bootstrap, t)
        finally:
            rc = await _stop(proc)
        assert rc == 0
        assert await total_predictions(server, runs) == n  # upserted by uuid: no duplicates
        assert await read_dlq(kafka_bootstrap, t.dlq, expect=0, timeout=2) == []


async def _stop(proc: asyncio.subprocess.Process, within_s: float = 60) -> int | None:
    """SIGTERM and wait; never raises, so a failure inside the test body stays the reported one."""
    if proc.returncode is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), within_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None


async def test_sigterm_finishes_in_flight_commits_and_exits_0(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    t = await make_topics(new_topic, unique_id)
    runs = [unique_id("mr") for _ in range(2)]
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=runs, data_rows=[{"id": f"dr-{i}"} for i in range(50)])
        await produce_stream(kafka_bootstrap, t, runs, 0, 600, per_sec=6000)
        # slow imports: SIGTERM arrives while batches are in flight
        server.add_fault({"kind": "latency", "latencyMs": 700, "fraction": 1.0,
                          "operations": ["createModelErrorAnalysisPredictionImport"]})
        env = settings_env(settings_for(kafka_bootstrap, t, server.url, batch_max_events=100, batch_linger_ms=50))
        proc = await spawn(env, tmp_path / "uploader.log")
        await wait_until(lambda: _gt(total_predictions(server, runs), 0), 60, "first rows stored")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        stored = await total_predictions(server, runs)
        got = await committed(kafka_bootstrap, t.group, [t.predictions])
        ends = await end_offsets(kafka_bootstrap, [t.predictions])
        done = sum(v or 0 for v in got.values())
        assert 0 < done <= stored, (got, stored)  # committed only what landed
        assert done <= sum(ends.values())
        server.clear_faults()
        proc = await spawn(env, tmp_path / "uploader.log")
        log = tmp_path / "uploader.log"
        # the first process may have finished everything: wait for the restart to be up
        await wait_until(lambda: _true(log.read_text().count("partitions assigned") >= 2), 120, "restart joined")
        try:
            await wait_until(lambda: _ge(total_predictions(server, runs), 600), 120, "the rest after restart")
            await wait_committed(kafka_bootstrap, t)
        finally:
            rc = await _stop(proc)
        assert rc == 0


async def test_two_processes_in_one_group_with_rebalances(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    t = await make_topics(new_topic, unique_id, partitions=4)
    runs = [unique_id("mr") for _ in range(8)]
    n = 4000
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=runs, data_rows=[{"id": f"dr-{i}"} for i in range(50)])
        server.add_fault({"kind": "latency", "latencyMs": 30, "fraction": 0.5})
        env = settings_env(settings_for(kafka_bootstrap, t, server.url, batch_max_events=100))
        producer = asyncio.create_task(produce_stream(kafka_bootstrap, t, runs, 0, n, per_sec=1000))
        a = await spawn(env, tmp_path / "a.log")
        await wait_until(lambda: _gt(total_predictions(server, runs), 200), 60, "A delivering")
        b = await spawn(env, tmp_path / "b.log")  # rebalance: partitions split between A and B
        await wait_until(lambda: _gt(total_predictions(server, runs), 2000), 90, "A and B delivering")
        a.send_signal(signal.SIGTERM)  # rebalance again: B takes everything
        assert await asyncio.wait_for(a.wait(), 60) == 0
        await producer
        try:
            await wait_until(lambda: _ge(total_predictions(server, runs), n), 120, "every row stored")
            await wait_committed(kafka_bootstrap, t)
        finally:
            rc = await _stop(b)
        assert rc == 0
        assert await total_predictions(server, runs) == n
        log_b = (tmp_path / "b.log").read_text()
        assert "partitions revoked" in log_b and "partitions assigned" in log_b


async def _gt(v: Awaitable[int], n: int) -> bool:
    return await v > n


async def _ge(v: Awaitable[int], n: int) -> bool:
    return await v >= n


async def test_sigterm_with_api_down_abandons_after_grace_and_commits_nothing(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    t = await make_topics(new_topic, unique_id)
    runs = [unique_id("mr")]
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=runs, data_rows=[{"id": f"dr-{i}"} for i in range(50)])
        await produce_stream(kafka_bootstrap, t, runs, 0, 200, per_sec=2000)
        server.add_fault({"kind": "http_error", "status": 503, "fraction": 1.0})
        env = settings_env(settings_for(kafka_bootstrap, t, server.url, shutdown_grace_s=2))
        proc = await spawn(env, tmp_path / "uploader.log")
        await wait_until(lambda: _true("retrying Labelbox call" in (tmp_path / "uploader.log").read_text()),
                         60, "retries under the outage")
        started = asyncio.get_running_loop().time()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert asyncio.get_running_loop().time() - started < 10  # bounded by shutdown_grace_s
        assert "abandoning in-flight work" in (tmp_path / "uploader.log").read_text()
        got = await committed(kafka_bootstrap, t.group, [t.predictions])
        assert all(v is None for v in got.values()), got


async def _true(v: bool) -> bool:
    return v
