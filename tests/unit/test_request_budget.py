"""The fair request budget: rate, concurrency, Retry-After pauses and round robin between model runs."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from service.labelbox.request_budget import FairBudget
from service.labelbox.request_limiter import RequestLimiter


def test_fast_path_until_the_burst_is_spent_then_the_rate() -> None:
    b = FairBudget(rate_per_s=10, burst=3, max_concurrent=100, now=0.0)
    assert [b.try_start(0.0) for _ in range(4)] == [True, True, True, False]
    t = b.submit("a", 0.0)
    assert b.grant(0.0) == ([], pytest.approx(0.1))
    assert b.grant(0.1) == ([t], None)
    assert b.in_flight == 4


def test_concurrency_cap_waits_for_a_release_not_a_timer() -> None:
    b = FairBudget(rate_per_s=1000, burst=1000, max_concurrent=2, now=0.0)
    assert b.try_start(0.0) and b.try_start(0.0)
    t = b.submit("a", 0.0)
    assert b.grant(0.0) == ([], None)
    b.release()
    assert b.grant(0.0) == ([t], None)
    with pytest.raises(RuntimeError):
        FairBudget(1, 1, 1, 0.0).release()


def test_round_robin_keeps_a_backlog_from_starving_another_run() -> None:
    b = FairBudget(rate_per_s=1, burst=1, max_concurrent=100, now=0.0)
    assert b.try_start(0.0)  # bucket now empty: everything below waits for tokens
    backlog = [b.submit("busy", 0.0) for _ in range(50)]
    quiet = [b.submit("quiet", 0.0) for _ in range(2)]
    order: list[int] = []
    now = 0.0
    for _ in range(6):
        now += 1.0
        got, _ = b.grant(now)
        order += got
    assert order == [backlog[0], quiet[0], backlog[1], quiet[1], backlog[2], backlog[3]]
    # a run that arrives later is served on the next turn, not after the backlog
    late = b.submit("late", now)
    got, _ = b.grant(now + 1.0)
    got2, _ = b.grant(now + 2.0)
    assert late in got + got2


def test_three_runs_share_equally_under_saturation() -> None:
    b = FairBudget(rate_per_s=10, burst=1, max_concurrent=100, now=0.0)
    b.try_start(0.0)
    tickets = {k: {b.submit(k, 0.0) for _ in range(100 if k == "a" else 30)} for k in "abc"}
    served = {k: 0 for k in "abc"}
    now = 0.0
    for _ in range(60):
        now += 0.1
        for t in b.grant(now)[0]:
            served[next(k for k, ts in tickets.items() if t in ts)] += 1
    assert served == {"a": 20, "b": 20, "c": 20}


def test_retry_after_pauses_every_run_then_restarts_at_the_rate() -> None:
    b = FairBudget(rate_per_s=10, burst=10, max_concurrent=100, now=0.0)
    b.pause(2.0, now=0.0)
    assert not b.try_start(1.0)
    t1, t2 = b.submit("a", 1.0), b.submit("b", 1.0)
    assert b.grant(1.9) == ([], 2.0)
    assert b.paused_until() == 2.0
    got, wake = b.grant(2.0)
    assert got == [] and wake == pytest.approx(2.1)  # empty bucket after the pause: no burst
    assert b.grant(2.1)[0] == [t1]
    assert b.grant(2.2)[0] == [t2]
    # a shorter pause never shortens a longer one
    b.pause(5.0, now=3.0)
    b.pause(1.0, now=3.0)
    assert b.paused_until() == 8.0
    b.pause(0.0, now=3.0)
    assert b.paused_until() == 8.0


def test_cancel_withdraws_a_waiting_ticket_only() -> None:
    b = FairBudget(rate_per_s=1, burst=1, max_concurrent=10, now=0.0)
    b.try_start(0.0)
    t1, t2 = b.submit("a", 0.0), b.submit("a", 0.0)
    assert b.cancel(t1) is True and b.cancel(t1) is False
    assert b.grant(1.0)[0] == [t2]
    assert b.cancel(t2) is False
    assert b.waiting == 0 and b.grant(5.0) == ([], None)


@pytest.mark.parametrize(("rate", "burst", "conc"), [(0, 1, 1), (-1, 1, 1), (float("inf"), 1, 1), (1, 0.5, 1),
                                                     (1, 1, 0)])
def test_bad_limits_are_refused(rate: float, burst: float, conc: int) -> None:
    with pytest.raises(ValueError):
        FairBudget(rate, burst, conc, 0.0)


def test_limiter_grants_round_robin_and_honours_a_pause() -> None:
    async def main() -> tuple[list[str], float, float]:
        lim = RequestLimiter(rate_per_s=50, max_concurrent=1, burst=1)
        order: list[str] = []
        counter = itertools.count()

        async def call(key: str) -> None:
            async with lim.slot(key):
                order.append(key)
                next(counter)
                await asyncio.sleep(0)

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.gather(*[call("busy") for _ in range(6)], *[call("quiet") for _ in range(2)])
        spent = loop.time() - t0
        lim.pause(0.3)
        t1 = loop.time()
        await call("other")
        return order, spent, loop.time() - t1

    order, spent, paused = asyncio.run(main())
    assert order[:5] == ["busy", "busy", "quiet", "busy", "quiet"]  # the first took the fast path
    assert spent >= 7 / 50 * 0.9  # 8 calls at 50/s with a burst of one
    assert paused >= 0.3 * 0.95


def test_cancelled_waiters_give_their_turn_back() -> None:
    async def main() -> int:
        lim = RequestLimiter(rate_per_s=1000, max_concurrent=1)
        await lim.acquire("a")  # holds the only slot
        waiter = asyncio.create_task(lim.acquire("b"))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        lim.release()
        async with asyncio.timeout(1):
            async with lim.slot("c"):
                return lim.budget.in_flight

    assert asyncio.run(main()) == 1
