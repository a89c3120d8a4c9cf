"""The process's Labelbox request budget, through LabelboxClient and the real local Labelbox API:
a 429 with Retry-After holds back every model run's requests, and a run with a deep backlog does not
starve a run that sends a few requests."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from uploader_harness import API_KEY, local_labelbox, seed

from service.labelbox import client as lb
from service.labelbox import errors as lb_errors
from service.labelbox.request_limiter import RequestLimiter


async def test_retry_after_of_one_run_holds_back_every_run(tmp_path: Path) -> None:
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=["mr-a", "mr-b"], data_rows=[{"id": "dr-1"}])
        done: list[tuple[str, float]] = []

        def hook(operation: str, status: int | None, seconds: float) -> None:
            done.append((f"{operation}:{status}", time.monotonic()))

        pauses: list[float] = []
        waits: list[float] = []
        limiter = RequestLimiter(rate_per_s=200, max_concurrent=8, on_pause=pauses.append, on_wait=waits.append)
        async with lb.LabelboxClient(server.url, API_KEY, on_request=hook, limiter=limiter) as client:
            server.add_fault({"kind": "rate_limit", "retryAfter": 2, "count": 1,
                              "operations": ["createMEAModelRunDataRowRegistrationTask"]})
            with pytest.raises(lb_errors.RateLimitError) as info:
                await client.create_data_row_registration("mr-a", ["dr-1"], None)
            assert info.value.retry_after == 2
            limited_at = time.monotonic()
            # another run, another operation: it still waits for run A's Retry-After
            got = await client.create_data_row_registration("mr-b", ["dr-1"], None)
            assert got
            b_done = done[-1][1]
            assert b_done - limited_at >= 1.9, f"run B was not held back: {b_done - limited_at:.2f} s"
            assert b_done - limited_at < 4.0
            assert limiter.pauses == 1 and pauses == [2]
            assert waits and max(waits) >= 1.9  # what /metrics reports as budget wait time
            # and without a 429, nothing waits
            t0 = time.monotonic()
            await client.create_data_row_registration("mr-b", ["dr-1"], None)
            assert time.monotonic() - t0 < 1.0


async def test_a_backlog_does_not_starve_another_run(tmp_path: Path) -> None:
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=["mr-busy", "mr-quiet"], data_rows=[{"id": "dr-1"}])
        order: list[str] = []
        limiter = RequestLimiter(rate_per_s=40, max_concurrent=2, burst=1)
        async with lb.LabelboxClient(server.url, API_KEY, limiter=limiter) as client:
            async def call(mr: str) -> None:
                await client.create_data_row_registration(mr, ["dr-1"], None)
                order.append(mr)

            busy = [asyncio.create_task(call("mr-busy")) for _ in range(40)]
            await asyncio.sleep(0.05)  # the backlog is queued first
            started = time.monotonic()
            await asyncio.gather(*[call("mr-quiet") for _ in range(4)])
            quiet_s = time.monotonic() - started
            await asyncio.gather(*busy)
        last_quiet = max(i for i, mr in enumerate(order) if mr == "mr-quiet")
        # turns alternate: the quiet run's 4 requests are done within ~8 grants of arriving, not after 40
        assert last_quiet < 16, order
        assert quiet_s < 0.8, quiet_s
