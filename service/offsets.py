"""Pure per-partition offset tracking for out-of-order completion.

Several batches are in flight at once and finish in any order; Kafka only lets us commit
"everything below N". The tracker remembers the offsets handed out per partition (in
fetch order, gaps allowed: compaction and transaction markers leave holes) and reports the
next offset to commit = one past the highest offset whose predecessors are all done.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class PartitionOffsets:
    """Offsets of one partition that were fetched and are not yet committable."""

    pending: deque[int] = field(default_factory=deque)
    done: set[int] = field(default_factory=set)
    commit_point: int | None = None  # next offset to commit (exclusive upper bound)
    committed: int | None = None  # last commit_point actually committed

    def track(self, offset: int) -> None:
        if self.pending and offset <= self.pending[-1]:
            raise ValueError(f"offset {offset} tracked out of order (last {self.pending[-1]})")
        if self.commit_point is not None and offset < self.commit_point:
            raise ValueError(f"offset {offset} is below the commit point {self.commit_point}")
        self.pending.append(offset)

    def mark_done(self, offset: int) -> None:
        if not self.pending or offset < self.pending[0]:
            return  # already advanced past it (duplicate completion)
        self.done.add(offset)
        while self.pending and self.pending[0] in self.done:
            head = self.pending.popleft()
            self.done.discard(head)
            self.commit_point = head + 1

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def to_commit(self) -> int | None:
        """The offset to commit now, or None when nothing new is committable."""
        if self.commit_point is None or self.commit_point == self.committed:
            return None
        return self.commit_point


class OffsetTracker:
    """Offset state for every assigned partition, keyed by (topic, partition)."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], PartitionOffsets] = {}

    def track(self, topic: str, partition: int, offset: int) -> None:
        self._parts.setdefault((topic, partition), PartitionOffsets()).track(offset)

    def mark_done(self, topic: str, partition: int, offset: int) -> None:
        part = self._parts.get((topic, partition))
        if part is not None:
            part.mark_done(offset)

    def committable(self) -> dict[tuple[str, int], int]:
        """Partitions with a new commit point, mapped to the offset to commit."""
        out: dict[tuple[str, int], int] = {}
        for tp, part in self._parts.items():
            off = part.to_commit()
            if off is not None:
                out[tp] = off
        return out

    def committed(self, offsets: dict[tuple[str, int], int]) -> None:
        """Record that ``offsets`` were committed successfully."""
        for tp, off in offsets.items():
            part = self._parts.get(tp)
            if part is not None:
                part.committed = off

    def in_flight(self, topic: str | None = None, partition: int | None = None) -> int:
        return sum(
            p.in_flight
            for (t, n), p in self._parts.items()
            if (topic is None or t == topic) and (partition is None or n == partition)
        )

    def processed_position(self, topic: str, partition: int) -> int | None:
        part = self._parts.get((topic, partition))
        return part.commit_point if part is not None else None

    def forget(self, partitions: list[tuple[str, int]] | None = None) -> None:
        """Drop state for revoked partitions (all when None)."""
        if partitions is None:
            self._parts.clear()
            return
        for tp in partitions:
            self._parts.pop(tp, None)
