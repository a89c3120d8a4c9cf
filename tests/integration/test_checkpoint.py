"""The Checkpoint (service.state.checkpoint) on a real SQLite store: offsets and state land together,
assignment seeks to the stored offsets, and a replica whose partition moved is fenced off — its
cache is dropped and it re-seeks to what its successor stored."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from service.aggregation import MessageOps, MetricLeaf, apply_batch
from service.state import CachedState, Checkpoint, SqlStateBackend

GROUP = "agg"
TP = ("runstream.metrics", 0)


def _ops(value: float) -> MessageOps:
    return MessageOps("r", metric_rows=[MetricLeaf("m", "SUM", "id:d1", None, None, {"": value})])


def _sum(backend: SqlStateBackend) -> float | None:
    for metric, ck, level, _f, _s, agg in backend.run_aggs("r"):
        if (metric, ck, level) == ("m", "", 0):
            value = agg.result("SUM")
            assert isinstance(value, float)
            return value
    return None


class Seeks:
    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, int], int | None]] = []

    async def __call__(self, tp: tuple[str, int], offset: int | None) -> None:
        self.calls.append((tp, offset))


def test_commit_assign_and_fencing(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    a_backend, b_backend = SqlStateBackend.sqlite(path), SqlStateBackend.sqlite(path)

    async def go() -> None:
        a_state, b_state = CachedState(a_backend), CachedState(b_backend)
        a_seek, b_seek = Seeks(), Seeks()
        a = Checkpoint(a_backend, a_state, GROUP, interval_s=0.0, seek=a_seek)
        b = Checkpoint(b_backend, b_state, GROUP, interval_s=0.0, seek=b_seek)
        # a fresh partition: seek to the beginning; apply two messages; a tick past the deadline commits
        await a.on_assigned({TP})
        assert a_seek.calls == [(TP, None)]
        apply_batch(a_state, [_ops(1.0), _ops(2.0)])
        a.advance(TP, 2)
        assert await a.tick()
        assert await a.flush() is True  # the commit the tick started landed
        assert await a.flush() is False  # nothing new: no commit
        assert a_backend.load_offsets(GROUP, [TP]) == {TP: 2} and _sum(a_backend) == 2.0
        assert a.take_published() == {TP: 2} and a.take_published() is None
        # b takes the partition over (a missed the revoke): it seeks to a's stored offset and commits on
        await b.on_assigned({TP})
        assert b_seek.calls == [(TP, 2)]
        apply_batch(b_state, [_ops(5.0)])
        b.advance(TP, 3)
        await b.close()
        assert b_backend.load_offsets(GROUP, [TP]) == {TP: 3} and _sum(b_backend) == 5.0
        # a, a zombie, applies more and commits: fenced off, nothing of it is written, and it re-seeks
        apply_batch(a_state, [_ops(9.0)])
        a.advance(TP, 3)
        assert await a.tick() is True  # starts the commit
        for _ in range(1000):  # a later tick finds it fenced off once its thread is done
            if not await a.tick():
                break
            await asyncio.sleep(0.01)
        assert a.stale == 1
        assert a_seek.calls[-1] == (TP, 3) and a.positions[TP] == 3 and a.stored[TP] == 3
        assert len(a_state) == 0 and not len(a_state.changes)  # the cache was dropped
        assert b_backend.load_offsets(GROUP, [TP]) == {TP: 3} and _sum(b_backend) == 5.0
        # a revoke flushes and forgets the partition
        await b.on_revoked({TP})
        assert TP not in b.assigned and TP not in b.positions

    try:
        asyncio.run(go())
    finally:
        a_backend.close()
        b_backend.close()


class GatedStore(SqlStateBackend):
    """A real SQLite store whose commits wait for a gate (a store slower than the interval)."""

    gate: threading.Event

    def commit(self, *args: Any, **kwargs: Any) -> None:
        assert self.gate.wait(10)
        super().commit(*args, **kwargs)


def test_a_slow_commit_does_not_block_the_loop(tmp_path: Path) -> None:
    """Past the deadline with a commit still being written, tick returns at once; the changes
    applied meanwhile go in the next commit, started at the first tick after the slow one landed."""
    plain = SqlStateBackend.sqlite(tmp_path / "state.sqlite3")
    backend = GatedStore(plain.kind, plain._conn, reader=plain._open_reader)
    backend.gate = threading.Event()

    async def go() -> None:
        state = CachedState(backend)
        cp = Checkpoint(backend, state, GROUP, interval_s=0.0)
        await cp.on_assigned({TP})
        apply_batch(state, [_ops(1.0)])
        cp.advance(TP, 1)
        await cp.tick()  # starts commit 1, which waits for the gate
        apply_batch(state, [_ops(2.0)])
        cp.advance(TP, 2)
        await asyncio.wait_for(cp.tick(), 1.0)  # does not wait for commit 1
        assert cp.commits == 0 and len(state.changes) > 0
        backend.gate.set()
        for _ in range(1000):
            await cp.tick()
            if cp.commits == 2:
                break
            await asyncio.sleep(0.01)
        assert cp.commits == 2 and backend.load_offsets(GROUP, [TP]) == {TP: 2} and _sum(backend) == 2.0

    try:
        asyncio.run(go())
    finally:
        backend.gate.set()
        backend.close()


def test_an_idle_tick_commits_before_the_deadline(tmp_path: Path) -> None:
    """Caught up (the poll came back empty): what is applied is committed without waiting for the
    interval; with work still arriving, the deadline rules; nothing pending, no commit."""
    backend = SqlStateBackend.sqlite(tmp_path / "state.sqlite3")

    async def go() -> None:
        state = CachedState(backend)
        cp = Checkpoint(backend, state, GROUP, interval_s=3600.0)
        await cp.on_assigned({TP})
        apply_batch(state, [_ops(1.0)])
        cp.advance(TP, 1)
        await cp.tick()
        await cp.wait_idle()
        assert cp.commits == 0 and backend.load_offsets(GROUP, [TP]) == {}
        await cp.tick(idle=True)
        for _ in range(1000):
            if await cp.tick(idle=True) and cp.commits == 1:
                break
            await asyncio.sleep(0.01)
        assert cp.commits == 1 and backend.load_offsets(GROUP, [TP]) == {TP: 1} and _sum(backend) == 1.0
        for _ in range(5):
            await cp.tick(idle=True)
            await cp.wait_idle()
        assert cp.commits == 1  # nothing pending: idle ticks write nothing

    try:
        asyncio.run(go())
    finally:
        backend.close()
