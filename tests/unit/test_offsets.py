from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.offsets import OffsetTracker, PartitionOffsets


def test_commit_only_contiguous_prefix() -> None:
    p = PartitionOffsets()
    for o in (5, 6, 7, 8):
        p.track(o)
    p.mark_done(7)
    assert p.to_commit() is None
    p.mark_done(5)
    assert p.to_commit() == 6
    p.mark_done(6)
    assert p.to_commit() == 8
    p.committed = 8
    assert p.to_commit() is None
    p.mark_done(8)
    assert p.to_commit() == 9 and p.in_flight == 0


def test_gaps_in_offsets_are_fine() -> None:
    p = PartitionOffsets()
    for o in (10, 13, 20):
        p.track(o)
    p.mark_done(13)
    p.mark_done(10)
    assert p.to_commit() == 14


def test_out_of_order_tracking_is_a_bug() -> None:
    p = PartitionOffsets()
    p.track(3)
    with pytest.raises(ValueError):
        p.track(3)


def test_duplicate_done_is_harmless() -> None:
    p = PartitionOffsets()
    p.track(1)
    p.mark_done(1)
    p.mark_done(1)
    assert p.to_commit() == 2


def test_tracker_per_partition_and_forget() -> None:
    t = OffsetTracker()
    t.track("a", 0, 0)
    t.track("a", 1, 0)
    t.track("a", 1, 1)
    t.mark_done("a", 1, 1)
    t.mark_done("a", 0, 0)
    assert t.committable() == {("a", 0): 1}
    t.committed({("a", 0): 1})
    assert t.committable() == {}
    assert t.in_flight() == 2
    t.forget([("a", 1)])
    assert t.in_flight() == 0
    t.mark_done("a", 1, 0)  # late completion for a revoked partition: ignored
    assert t.committable() == {}


@given(st.lists(st.integers(0, 3), min_size=1, max_size=60), st.randoms())
def test_commit_point_never_passes_an_unfinished_offset(gaps: list[int], rnd: random.Random) -> None:
    offsets: list[int] = []
    o = 0
    for g in gaps:
        o += g + 1
        offsets.append(o)
    p = PartitionOffsets()
    for x in offsets:
        p.track(x)
    order = offsets[:]
    rnd.shuffle(order)
    done: set[int] = set()
    for x in order:
        p.mark_done(x)
        done.add(x)
        cp = p.to_commit()
        if cp is not None:
            assert all(y in done for y in offsets if y < cp)
    assert p.to_commit() == offsets[-1] + 1
