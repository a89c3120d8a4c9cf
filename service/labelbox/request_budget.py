"""Pure: one process's Labelbox request budget, shared fairly between model runs.

Labelbox limits requests per minute per organisation and answers 429 with ``Retry-After`` once
the budget is spent, and the budget is shared by every model run the process uploads. Three
limits decide when a request may start:

- a token bucket: ``rate_per_s`` on average, at most ``burst`` at once;
- ``max_concurrent`` requests in flight;
- a pause: after a 429, nobody starts a request before its ``Retry-After`` has passed (the
  budget is the organisation's, so every run waits, not only the request that got the 429).

Requests wait in one queue per key (the model run) and the keys take turns, one request
each (round robin), so a run with a deep backlog or a retry storm gets its share and no more:
it cannot starve a run that sends one request now and then.

No clock, no I/O: time comes in as ``now`` (seconds, monotonic); the asyncio shell
(service.labelbox.request_limiter) turns grants into woken waiters and ``wake_at`` into a timer.
"""

from __future__ import annotations

import math
from collections import deque

_EPS = 1e-9  # float dust: 0.1 s at 10/s must make a whole token


class FairBudget:
    def __init__(self, rate_per_s: float, burst: float, max_concurrent: int, now: float) -> None:
        if not rate_per_s > 0 or math.isinf(rate_per_s):
            raise ValueError(f"rate_per_s must be a positive number, got {rate_per_s}")
        if not burst >= 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.max_concurrent = max_concurrent
        self._tokens = float(burst)
        self._last = now
        self._paused_until = -math.inf
        self.in_flight = 0
        self._next_ticket = 0
        self._queues: dict[str, deque[int]] = {}  # key -> waiting tickets, oldest first
        self._ring: deque[str] = deque()  # keys with waiting tickets, in turn order
        self._key_of: dict[int, str] = {}  # waiting ticket -> key

    # ------------------------------------------------------------------ state

    @property
    def waiting(self) -> int:
        return len(self._key_of)

    def paused_until(self) -> float:
        return self._paused_until

    def _refill(self, now: float) -> None:
        start = max(self._last, self._paused_until)
        if now > start:
            self._tokens = min(self.burst, self._tokens + (now - start) * self.rate_per_s)
            self._last = now

    def _can_start(self, now: float) -> bool:
        return now >= self._paused_until and self.in_flight < self.max_concurrent and self._tokens >= 1.0 - _EPS

    def _take(self) -> None:
        self._tokens -= 1.0
        self.in_flight += 1

    # ------------------------------------------------------------------ requests

    def try_start(self, now: float) -> bool:
        """Start a request at once if nobody is waiting and every limit allows it (the fast path)."""
        if self._key_of:
            return False
        self._refill(now)
        if not self._can_start(now):
            return False
        self._take()
        return True

    def submit(self, key: str, now: float) -> int:
        """Queue a request of ``key``; returns its ticket (granted later by ``grant``)."""
        ticket = self._next_ticket
        self._next_ticket += 1
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = deque()
            self._ring.append(key)
        q.append(ticket)
        self._key_of[ticket] = key
        return ticket

    def cancel(self, ticket: int) -> bool:
        """Withdraw a waiting ticket; False if it is not waiting (granted already, or unknown)."""
        key = self._key_of.pop(ticket, None)
        if key is None:
            return False
        q = self._queues[key]
        q.remove(ticket)
        if not q:
            del self._queues[key]
            self._ring.remove(key)
        return True

    def grant(self, now: float) -> tuple[list[int], float | None]:
        """Tickets that may start now, in round-robin order over keys, and when to call again.

        ``wake_at`` is when the pause ends or the next token arrives, if tickets are still waiting
        for either; None when nothing waits or only a finishing request can free a slot (then
        ``release`` is the moment to call again).
        """
        self._refill(now)
        granted: list[int] = []
        while self._ring and self._can_start(now):
            key = self._ring.popleft()
            q = self._queues[key]
            ticket = q.popleft()
            del self._key_of[ticket]
            if q:
                self._ring.append(key)
            else:
                del self._queues[key]
            self._take()
            granted.append(ticket)
        if not self._ring:
            return granted, None
        if now < self._paused_until:
            return granted, self._paused_until
        if self.in_flight >= self.max_concurrent:
            return granted, None
        return granted, now + max(0.0, 1.0 - self._tokens) / self.rate_per_s

    def release(self) -> None:
        """A started request finished (whatever its outcome)."""
        if self.in_flight <= 0:
            raise RuntimeError("release() without a started request")
        self.in_flight -= 1

    def pause(self, seconds: float, now: float) -> None:
        """Labelbox said "not before ``seconds``" (429 Retry-After): nobody starts before then, and
        the bucket starts empty afterwards, so the restart is at ``rate_per_s`` and not a burst."""
        if seconds <= 0:
            return
        until = now + seconds
        if until > self._paused_until:
            self._refill(now)
            self._paused_until = until
            self._tokens = 0.0
            self._last = until
