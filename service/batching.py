"""Pure batching policy for the uploader: one open batch per model run.

A batch is flushed at whichever comes first: ``max_events`` messages, ``max_bytes`` of
payload, or ``linger_ms`` since its first message. Time is passed in (no clock here), so
the policy is deterministic and unit-testable; the runtime owns the timer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
# What ``add`` returns when nothing is flushed (the common case): one shared empty list, never mutated.
_NOTHING: list[Any] = []


@dataclass(frozen=True)
class BatchLimits:
    """Flush thresholds; ``linger_s`` is seconds (the setting is milliseconds)."""

    max_events: int
    max_bytes: int
    linger_s: float

    @classmethod
    def from_ms(cls, max_events: int, max_bytes: int, linger_ms: int) -> BatchLimits:
        return cls(max_events=max_events, max_bytes=max_bytes, linger_s=linger_ms / 1000.0)


@dataclass(slots=True)
class Batch(Generic[T]):
    """Items of one model run collected until a flush condition was met."""

    key: str
    opened_at: float
    items: list[T] = field(default_factory=list)
    size_bytes: int = 0

    @property
    def events(self) -> int:
        return len(self.items)


class Batcher(Generic[T]):
    """Groups items by key (the model run id) and decides when each group is flushed.

    ``add`` returns the batches that must be flushed now (at most two: a batch that would
    have overflowed ``max_bytes`` is closed before the new item, and a batch that just
    reached a limit is closed after it). ``due`` returns batches whose linger expired.
    """

    def __init__(self, limits: BatchLimits) -> None:
        self._limits = limits
        self._max_events = limits.max_events
        self._max_bytes = limits.max_bytes
        self._open: dict[str, Batch[T]] = {}
        self._bytes = 0
        self._events = 0

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    @property
    def buffered_events(self) -> int:
        return self._events

    def __len__(self) -> int:
        return len(self._open)

    def add(self, key: str, item: T, size: int, now: float) -> list[Batch[T]]:
        batch = self._open.get(key)
        if batch is not None:
            grown = batch.size_bytes + size
            if grown < self._max_bytes:  # joins its open batch and flushes nothing by size (once per message)
                items = batch.items
                items.append(item)
                batch.size_bytes = grown
                self._bytes += size
                self._events += 1
                return _NOTHING if len(items) < self._max_events else [self._close(key)]
        return self._add(key, item, size, now)

    def _add(self, key: str, item: T, size: int, now: float) -> list[Batch[T]]:
        flushed: list[Batch[T]] = []
        limits = self._limits
        batch = self._open.get(key)
        if batch is not None and batch.items and batch.size_bytes + size > limits.max_bytes:
            flushed.append(self._close(key))
            batch = None
        if batch is None:
            batch = Batch(key=key, opened_at=now)
            self._open[key] = batch
        items = batch.items
        items.append(item)
        batch.size_bytes += size
        self._bytes += size
        self._events += 1
        if len(items) >= limits.max_events or batch.size_bytes >= limits.max_bytes:
            flushed.append(self._close(key))
        return flushed

    def due(self, now: float) -> list[Batch[T]]:
        """Batches whose linger time has passed, oldest first."""
        keys = [k for k, b in self._open.items() if now - b.opened_at >= self._limits.linger_s]
        return [self._close(k) for k in keys]

    def next_deadline(self) -> float | None:
        """When the oldest open batch must be flushed; None when nothing is open."""
        if not self._open:
            return None
        return min(b.opened_at for b in self._open.values()) + self._limits.linger_s

    def drain(self) -> list[Batch[T]]:
        """Close every open batch (shutdown, rebalance)."""
        return [self._close(k) for k in list(self._open)]

    def _close(self, key: str) -> Batch[T]:
        batch = self._open.pop(key)
        self._bytes -= batch.size_bytes
        self._events -= batch.events
        return batch
