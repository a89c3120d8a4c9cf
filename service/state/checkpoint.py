"""The commit lifecycle of the aggregator: what is applied becomes durable with its offsets.

Why one object: the stored offsets, the pipelined commit, fencing and (re)assignment all
touch the same three things — the positions applied so far, the offsets the store holds, and
the commit in flight — and their order is what makes the aggregator exactly-once:

- :meth:`advance` records the next offset to apply of a partition after a batch is applied.
- :meth:`tick` (called between batches): lands a finished commit; at the commit deadline (or
  sooner, once the consumer has caught up: ``idle``) it starts the next one —
  the changes encoded to rows now, written in a thread while the next
  batches are applied; state and offsets go in one store transaction. A commit still running
  at the deadline is not waited for: the next one starts once it has landed.
- A commit fenced off (:class:`~service.state.store.StaleStateError`: another replica moved
  a stored offset) drops the cache and re-seeks every assigned partition to its stored
  offset: everything since is re-read (the usual recovery path).
- :meth:`on_assigned` seeks new partitions to the stored offsets, :meth:`on_revoked` flushes
  while the partitions are still ours, :meth:`close` flushes at shutdown.

Not thread-safe: the caller serializes calls (the aggregator holds its lock).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from service.state.cache import CachedState
from service.state.store import PartitionKey, StaleStateError, StateBackend

log = logging.getLogger("runstream.aggregator")

# seek(partition, offset): position the consumer; offset None = the beginning of the partition
Seek = Callable[[PartitionKey, int | None], Awaitable[None]]


class _Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class Checkpoint:
    """Stored offsets, the pipelined commit and fencing for one consumer group (see module doc)."""

    def __init__(
        self,
        backend: StateBackend,
        state: CachedState,
        group: str,
        *,
        interval_s: float,
        seek: Seek | None = None,
        on_commit: Callable[[], None] | None = None,
        commit_seconds: _Observer | None = None,
    ) -> None:
        self.backend = backend
        self.state = state
        self.group = group
        self.interval = interval_s
        self.seek = seek
        self.on_commit = on_commit
        self.commit_seconds = commit_seconds
        self.assigned: set[PartitionKey] = set()
        self.positions: dict[PartitionKey, int] = {}  # next offset to apply, per assigned partition
        self.stored: dict[PartitionKey, int] = {}  # offset the store holds (fencing expectation)
        self.commits = 0
        self.stale = 0
        self.last_commit_at = 0.0
        self.published = False  # a commit landed since offsets were last mirrored to Kafka
        self._inflight: asyncio.Task[None] | None = None
        self._inflight_offsets: dict[PartitionKey, int] = {}
        self._inflight_started = 0.0
        self._next_commit = time.monotonic() + interval_s

    def start_clock(self) -> None:
        """The first commit is due one interval from now."""
        self._next_commit = time.monotonic() + self.interval

    def advance(self, tp: PartitionKey, next_offset: int) -> None:
        """Everything before ``next_offset`` of ``tp`` is applied to the state."""
        self.positions[tp] = next_offset

    # ---- commits

    async def tick(self, *, evict: bool = True, idle: bool = False) -> bool:
        """Land a finished commit; at the deadline start the next. False if fenced off meanwhile.

        ``evict=False`` keeps every cached row (mid-batch: the rest of the batch reads them).
        ``idle=True`` (the last poll returned nothing: the consumer has caught up) starts a commit
        of what is pending without waiting for the deadline: the interval bounds how long applied
        changes wait to be durable under load, and with nothing left to read there is nothing to
        batch them with, so the aggregates and offsets become durable (and visible) right away.
        """
        stale = self.stale
        if self._inflight is not None and self._inflight.done():
            await self._finish(evict=evict)
        if idle and self._inflight is None and self._pending():
            self._start()
            self._next_commit = time.monotonic() + self.interval
        elif time.monotonic() >= self._next_commit and self._inflight is None:
            # A commit still being written past the deadline is not waited for: the loop keeps
            # applying, and the next commit starts at the first tick after it landed (larger, so
            # the store writes more rows per transaction when it cannot keep up with the interval).
            self._start()
            # from the deadline, not from now: ticks come between batches, so "now" drifts late
            self._next_commit = max(self._next_commit + self.interval, time.monotonic() + self.interval / 2)
        return self.stale == stale

    async def flush(self) -> bool:
        """Write everything applied so far and wait until it is durable; True if a commit landed."""
        landed = await self._finish()
        self._start()
        return await self._finish() or landed

    async def close(self) -> None:
        """At shutdown: flush everything applied so far."""
        try:
            await self.flush()
        finally:
            await self.wait_idle()

    async def wait_idle(self) -> None:
        """If an error left a commit running, let its thread end (its outcome no longer matters)."""
        if self._inflight is not None:
            await asyncio.wait([self._inflight])
            self._inflight = None

    def take_published(self) -> dict[PartitionKey, int] | None:
        """The stored offsets of assigned partitions if a commit landed since the last call."""
        if not self.published:
            return None
        self.published = False
        return {tp: o for tp, o in self.stored.items() if tp in self.assigned}

    def _pending(self) -> bool:
        """Something applied is not yet in the store (state changes or moved positions)."""
        if len(self.state.changes):
            return True
        return any(pos != self.stored.get(tp) for tp, pos in self.positions.items())

    def _start(self) -> None:
        """Encode state changes + next offsets and start writing them (one store transaction)
        in a thread. At most one commit is in flight: call :meth:`_finish` first."""
        assert self._inflight is None
        offsets = {tp: pos for tp, pos in self.positions.items() if pos != self.stored.get(tp)}
        if not offsets and not len(self.state.changes):
            return
        encoded = self.state.take_changes().encode()
        expected = {tp: self.stored.get(tp) for tp in offsets}
        self._inflight_offsets = offsets
        self._inflight_started = time.perf_counter()
        self._inflight = asyncio.create_task(
            asyncio.to_thread(self.backend.commit, self.group, encoded, offsets, expected)
        )

    async def _finish(self, *, evict: bool = True) -> bool:
        """Wait for the in-flight commit; True if it stored something."""
        task, self._inflight = self._inflight, None
        if task is None:
            return False
        try:
            await task
        except StaleStateError as exc:
            self.stale += 1
            log.warning("commit fenced off: %s; reloading state for the current assignment", exc)
            self.state.reset()
            await self._load_and_seek(self.assigned)
            return False
        except BaseException:
            self.state.reset()  # the cache holds rows the store does not: never serve them
            raise
        if self.commit_seconds is not None:
            self.commit_seconds.observe(time.perf_counter() - self._inflight_started)
        if evict:
            self.state.committed()
        self.stored.update(self._inflight_offsets)
        self.published = True
        self.commits += 1
        self.last_commit_at = time.time()
        if self.on_commit is not None:
            self.on_commit()
        return True

    # ---- assignment

    async def _load_and_seek(self, partitions: Iterable[PartitionKey]) -> None:
        parts = sorted(partitions)
        stored = await asyncio.to_thread(self.backend.load_offsets, self.group, parts)
        for tp in parts:
            self.stored.pop(tp, None)
            self.positions.pop(tp, None)
            if tp in stored:
                self.stored[tp] = stored[tp]
                self.positions[tp] = stored[tp]
            if self.seek is not None:
                await self.seek(tp, stored.get(tp))

    async def on_assigned(self, partitions: set[PartitionKey]) -> None:
        """Seek every new partition to the offset the store holds (the beginning if none)."""
        self.state.reset()
        self.assigned |= partitions
        await self._load_and_seek(partitions)

    async def on_revoked(self, partitions: set[PartitionKey]) -> None:
        """Flush state + offsets while we still own the partitions, then forget cached state."""
        try:
            await self.flush()
        finally:
            for tp in partitions:
                self.assigned.discard(tp)
                self.positions.pop(tp, None)
                self.stored.pop(tp, None)
            self.state.reset()
