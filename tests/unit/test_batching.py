from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from service.batching import Batcher, BatchLimits


def limits(events: int = 3, nbytes: int = 100, linger: float = 1.0) -> BatchLimits:
    return BatchLimits(max_events=events, max_bytes=nbytes, linger_s=linger)


def test_flush_at_max_events() -> None:
    b: Batcher[int] = Batcher(limits(events=3))
    assert b.add("r1", 1, 1, 0.0) == []
    assert b.add("r1", 2, 1, 0.0) == []
    out = b.add("r1", 3, 1, 0.0)
    assert [x.items for x in out] == [[1, 2, 3]]
    assert b.buffered_bytes == 0 and len(b) == 0


def test_batches_are_per_model_run() -> None:
    b: Batcher[str] = Batcher(limits(events=2))
    assert b.add("r1", "a", 1, 0.0) == []
    assert b.add("r2", "b", 1, 0.0) == []
    out = b.add("r1", "c", 1, 0.0)
    assert [(x.key, x.items) for x in out] == [("r1", ["a", "c"])]
    assert b.buffered_events == 1


def test_byte_overflow_closes_previous_batch_first() -> None:
    b: Batcher[str] = Batcher(limits(events=100, nbytes=10))
    assert b.add("r", "a", 6, 0.0) == []
    out = b.add("r", "b", 6, 0.0)  # 12 > 10: "a" flushed alone, "b" opens a new batch
    assert [x.items for x in out] == [["a"]]
    assert b.buffered_bytes == 6


def test_single_oversized_item_flushes_alone() -> None:
    b: Batcher[str] = Batcher(limits(events=100, nbytes=10))
    out = b.add("r", "big", 50, 0.0)
    assert [x.items for x in out] == [["big"]]


def test_linger() -> None:
    b: Batcher[str] = Batcher(limits(linger=0.5))
    b.add("r1", "a", 1, 10.0)
    b.add("r2", "b", 1, 10.2)
    assert b.next_deadline() == 10.5
    assert b.due(10.4) == []
    assert [x.key for x in b.due(10.5)] == ["r1"]
    assert b.next_deadline() == 10.7
    assert [x.key for x in b.drain()] == ["r2"]
    assert b.next_deadline() is None


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 40)), max_size=200),
       st.integers(1, 7), st.integers(1, 100))
def test_nothing_lost_and_limits_hold(items: list[tuple[str, int]], max_events: int, max_bytes: int) -> None:
    b: Batcher[int] = Batcher(limits(events=max_events, nbytes=max_bytes))
    seen: list[int] = []
    for i, (key, size) in enumerate(items):
        for batch in b.add(key, i, size, float(i)):
            assert batch.events <= max_events
            assert batch.events == 1 or batch.size_bytes <= max_bytes
            assert all(items[j][0] == batch.key for j in batch.items)
            seen.extend(batch.items)
    seen.extend(i for batch in b.drain() for i in batch.items)
    assert sorted(seen) == list(range(len(items)))
    assert b.buffered_bytes == 0
