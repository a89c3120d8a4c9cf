"""The asyncio shell around service.labelbox.request_budget: requests wait here for their turn.

One ``RequestLimiter`` per process, shared by every model run (the LabelboxClient holds it):
``async with limiter.slot(model_run_id):`` around each Labelbox request, ``limiter.pause(s)``
when Labelbox answers 429 with ``Retry-After: s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from service.labelbox.request_budget import FairBudget


class RequestLimiter:
    def __init__(self, rate_per_s: float, max_concurrent: int, *, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic, on_wait: Callable[[float], None] | None = None,
                 on_pause: Callable[[float], None] | None = None) -> None:
        self._clock = clock
        self._on_wait = on_wait  # seconds a request waited for its turn (not called on the fast path)
        self._on_pause = on_pause  # a Retry-After pause of the whole process, in seconds
        self.budget = FairBudget(rate_per_s, burst if burst is not None else max(1.0, rate_per_s),
                                 max_concurrent, clock())
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self.pauses = 0  # Retry-After pauses applied

    def __repr__(self) -> str:
        b = self.budget
        return (f"RequestLimiter(rate_per_s={b.rate_per_s:g}, max_concurrent={b.max_concurrent}, "
                f"in_flight={b.in_flight}, waiting={b.waiting})")

    @contextlib.asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        await self.acquire(key)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, key: str) -> None:
        now = self._clock()
        if self.budget.try_start(now):
            return
        ticket = self.budget.submit(key, now)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = fut
        self._dispatch()
        try:
            await fut
        except asyncio.CancelledError:
            if self._waiters.pop(ticket, None) is not None:
                self.budget.cancel(ticket)  # still waiting: withdraw it
            elif fut.done() and not fut.cancelled():
                self.release()  # granted, but the caller is gone before using it
            raise
        finally:
            waited = self._clock() - now
            if self._on_wait is not None:
                self._on_wait(waited)

    def release(self) -> None:
        self.budget.release()
        self._dispatch()

    def pause(self, seconds: float) -> None:
        """Nobody starts a request for ``seconds`` (a 429's Retry-After), whichever run it is for."""
        if seconds > 0:
            self.pauses += 1
            if self._on_pause is not None:
                self._on_pause(seconds)
            self.budget.pause(seconds, self._clock())
            self._dispatch()

    def _dispatch(self) -> None:
        while True:
            granted, wake_at = self.budget.grant(self._clock())
            unused = False
            for ticket in granted:
                fut = self._waiters.pop(ticket, None)
                if fut is None or fut.done():  # its caller was cancelled: the slot is free again
                    self.budget.release()
                    unused = True
                else:
                    fut.set_result(None)
            if not unused:
                break
        if wake_at is not None and wake_at < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = wake_at
            self._timer = asyncio.get_running_loop().call_later(max(0.0, wake_at - self._clock()),
                                                                self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self._dispatch()
