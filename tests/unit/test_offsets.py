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


def test_track_many_refuses_what_track_refuses() -> None:
    """A re-fetch after a seek overlaps what is tracked: the overlap is skipped, the rest tracked."""
    p = PartitionOffsets()
    assert p.track_many([3, 4, 5]) == 0
    assert p.track_many([4, 5, 6, 8]) == 2
    assert list(p.pending) == [3, 4, 5, 6, 8]
    p.mark_done_many([3, 4, 5, 6, 8])
    assert p.to_commit() == 9 and p.in_flight == 0
    assert p.track_many([7, 8, 9]) == 2  # below the commit point, pending empty
    assert p.track_many([]) == 0
    assert list(p.pending) == [9]


@given(st.lists(st.integers(0, 60), max_size=40), st.randoms())
def test_bulk_methods_match_one_at_a_time(fetch: list[int], rnd: random.Random) -> None:
    """Same state as track/mark_done one offset at a time, for tracked offsets done in any order, twice."""
    one, many = PartitionOffsets(), PartitionOffsets()
    offsets = sorted(set(fetch))
    done = offsets * 2
    rnd.shuffle(done)
    cut = rnd.randint(0, len(offsets))
    for chunk in (offsets[:cut], offsets[max(0, cut - 3):]):  # the second fetch overlaps the first
        refused = 0
        for o in chunk:
            try:
                one.track(o)
            except ValueError:
                refused += 1
        assert many.track_many(chunk) == refused
    for i in range(0, len(done), 7):
        part = done[i:i + 7]
        for o in part:
            one.mark_done(o)
        many.mark_done_many(part)
        assert (list(one.pending), one.done, one.commit_point) == (list(many.pending), many.done, many.commit_point)
