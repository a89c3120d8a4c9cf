"""Pure per-partition offset tracking for out-of-order completion.

Several batches are in flight at once and finish in any order; Kafka only lets us commit
"everything below N". The tracker remembers the offsets handed out per partition (in
fetch order, gaps allowed: compaction and transaction markers leave holes) and reports the
next offset to commit = one past the highest offset whose predecessors are all done.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Sequence
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

    def track_many(self, offsets: Sequence[int]) -> int:
        """Track one fetch's offsets (ascending, as Kafka returns them) in one call; returns how many
        leading ones were skipped because they are already tracked or below the commit point (a
        re-fetch after a seek) -- exactly the ones ``track`` would refuse."""
        floor = self.pending[-1] if self.pending else None
        if self.commit_point is not None and (floor is None or self.commit_point - 1 > floor):
            floor = self.commit_point - 1
        skip = 0 if floor is None or not offsets or offsets[0] > floor else bisect_right(offsets, floor)
        self.pending.extend(offsets[skip:] if skip else offsets)
        return skip

    def mark_done(self, offset: int) -> None:
        if not self.pending or offset < self.pending[0]:
            return  # already advanced past it (duplicate completion)
        self.done.add(offset)
        self._advance()

    def mark_done_many(self, offsets: Sequence[int]) -> None:
        """``mark_done`` for many tracked offsets at once (a finished batch), advancing the commit point once."""
        if not self.pending:
            return
        head = self.pending[0]
        if min(offsets, default=head) < head:
            offsets = [o for o in offsets if o >= head]
        self.done.update(offsets)
        self._advance()

    def _advance(self) -> None:
        pending, done = self.pending, self.done
        if not pending or pending[0] not in done:
            return
        popleft, discard = pending.popleft, done.discard
        head = pending[0]
        while pending and pending[0] in done:
            head = popleft()
            discard(head)
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

    def track_many(self, topic: str, partition: int, offsets: Sequence[int]) -> int:
        """Track a fetch of one partition; returns how many leading offsets were refused (see PartitionOffsets)."""
        part = self._parts.get((topic, partition))
        if part is None:
            part = self._parts[(topic, partition)] = PartitionOffsets()
        return part.track_many(offsets)

    def mark_done(self, topic: str, partition: int, offset: int) -> None:
        part = self._parts.get((topic, partition))
        if part is not None:
            part.mark_done(offset)

    def mark_done_many(self, topic: str, partition: int, offsets: Sequence[int]) -> None:
        part = self._parts.get((topic, partition))
        if part is not None:
            part.mark_done_many(offsets)

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
