"""State-store fencing on SQLite: a replica that commits offsets for a partition whose stored offset
moved since it loaded it gets StaleStateError, and nothing of that transaction is written.

Two SqlStateBackend connections on one database file play two replicas; the state changes are real
(service.aggregation.apply_message on a CachedState), so "nothing written" is checked on aggregates too.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.aggregation import AnnotationUpdate, MessageOps, MetricLeaf, apply_message
from service.state import CachedState, Changes, SqlStateBackend, StaleStateError

GROUP = "agg"
P0, P1 = ("runstream.metrics", 0), ("runstream.metrics", 1)


def _changes(backend: SqlStateBackend, run: str, value: float) -> Changes:
    state = CachedState(backend)
    ops = MessageOps(run, metric_rows=[MetricLeaf("m", "SUM", "id:d1", None, None, {"": value})])
    apply_message(state, ops)
    return state.take_changes()


def _sum(backend: SqlStateBackend, run: str) -> float | None:
    for metric, ck, level, _f, _s, agg in backend.run_aggs(run):
        if (metric, ck, level) == ("m", "", 0):
            value = agg.result("SUM")
            assert isinstance(value, float)
            return value
    return None


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[SqlStateBackend, SqlStateBackend]]:
    path = tmp_path / "state.sqlite3"
    a, b = SqlStateBackend.sqlite(path), SqlStateBackend.sqlite(path)
    yield a, b
    a.close()
    b.close()


def test_zombie_commit_after_takeover_is_fenced(replicas: tuple[SqlStateBackend, SqlStateBackend]) -> None:
    a, b = replicas
    # A owns P0 from scratch and commits up to offset 10.
    assert a.load_offsets(GROUP, [P0]) == {}
    a.commit(GROUP, _changes(a, "r", 1.0), {P0: 10}, {P0: None})
    # Rebalance: B takes P0 over, loads 10, and moves it to 20.
    assert b.load_offsets(GROUP, [P0]) == {P0: 10}
    b.commit(GROUP, _changes(b, "r", 2.0), {P0: 20}, {P0: 10})
    # A did not notice and still believes the stored offset is 10: fenced, nothing of it written.
    with pytest.raises(StaleStateError, match=r"runstream\.metrics\[0\].*another replica"):
        a.commit(GROUP, _changes(a, "zombie-run", 5.0), {P0: 15}, {P0: 10})
    for backend in (a, b):
        assert backend.load_offsets(GROUP, [P0]) == {P0: 20}
        assert _sum(backend, "r") == 2.0  # B's replacement of d1's value stands
        assert not backend.run_exists("zombie-run")
    # After reloading, A commits normally again (the failed transaction left nothing open).
    stored = a.load_offsets(GROUP, [P0])[P0]
    a.commit(GROUP, _changes(a, "r", 3.0), {P0: 25}, {P0: stored})
    assert b.load_offsets(GROUP, [P0]) == {P0: 25} and _sum(b, "r") == 3.0


def test_two_first_commits_for_a_new_partition_only_one_wins(
    replicas: tuple[SqlStateBackend, SqlStateBackend],
) -> None:
    a, b = replicas
    assert a.load_offsets(GROUP, [P0]) == {} and b.load_offsets(GROUP, [P0]) == {}
    a.commit(GROUP, _changes(a, "r", 1.0), {P0: 3}, {P0: None})
    with pytest.raises(StaleStateError):
        b.commit(GROUP, _changes(b, "r", 9.0), {P0: 5}, {P0: None})
    assert a.load_offsets(GROUP, [P0]) == {P0: 3} and _sum(a, "r") == 1.0


def test_one_stale_partition_rolls_back_the_whole_commit(replicas: tuple[SqlStateBackend, SqlStateBackend]) -> None:
    a, b = replicas
    a.commit(GROUP, Changes(), {P0: 10, P1: 10}, {P0: None, P1: None})
    b.commit(GROUP, Changes(), {P1: 30}, {P1: 10})  # B took P1 only
    with pytest.raises(StaleStateError, match=r"\[1\]"):
        a.commit(GROUP, _changes(a, "r", 4.0), {P0: 12, P1: 12}, {P0: 10, P1: 10})
    assert b.load_offsets(GROUP, [P0, P1]) == {P0: 10, P1: 30}  # P0 did not move either
    assert not b.run_exists("r")


def test_expected_offset_must_match_the_stored_one_exactly(
    replicas: tuple[SqlStateBackend, SqlStateBackend],
) -> None:
    """The expectation is the exact stored value, not "smaller than mine": a lower stored offset also fences."""
    a, b = replicas
    a.commit(GROUP, Changes(), {P0: 10}, {P0: None})
    with pytest.raises(StaleStateError):
        b.commit(GROUP, Changes(), {P0: 40}, {P0: 30})
    assert a.load_offsets(GROUP, [P0]) == {P0: 10}


def test_groups_do_not_fence_each_other(replicas: tuple[SqlStateBackend, SqlStateBackend]) -> None:
    a, b = replicas
    a.commit(GROUP, Changes(), {P0: 10}, {P0: None})
    b.commit("other-group", Changes(), {P0: 99}, {P0: None})
    assert a.load_offsets(GROUP, [P0]) == {P0: 10}
    assert a.load_offsets("other-group", [P0]) == {P0: 99}


# ---- filters on nodes below the data row (rs_node_nums) --------------------------------------


def _leaf(value: dict[str, float], f: str | None = "cat", s: str | None = None, dr: str = "id:d1") -> MetricLeaf:
    return MetricLeaf("am", "ARITHMETIC_MEAN", dr, f, s, value)  # type: ignore[arg-type]


def _apply(backend: SqlStateBackend, state: CachedState, n: int, *leaves: MetricLeaf) -> None:
    ops = MessageOps("r", metric_rows=list(leaves))
    state.prefetch([ops])
    apply_message(state, ops)
    backend.commit(GROUP, state.take_changes(), {P0: n}, {P0: n - 1 if n > 1 else None})
    state.committed()


def _cat(backend: SqlStateBackend, lo: float, hi: float, ck: str = "", s: str = "") -> list[str]:
    return sorted(backend.rows_in_range("r", "am", ck, 2 if s else 1, "cat", s, lo, hi))


@pytest.mark.parametrize("fresh_cache", [False, True], ids=["same-cache", "cache-per-commit"])
def test_feature_filter_follows_replaced_values(tmp_path: Path, fresh_cache: bool) -> None:
    """A replaced leaf moves its feature/subclass/confidence-key nodes out of a range and back in;
    from the cache (diffed in memory) and from a fresh cache (diffed against the stored tree)."""
    backend = SqlStateBackend.sqlite(tmp_path / "s.sqlite3")
    state = CachedState(backend)

    def step(n: int, *leaves: MetricLeaf) -> None:
        _apply(backend, CachedState(backend) if fresh_cache else state, n, *leaves)

    try:
        step(1, _leaf({"": 0.25}), _leaf({"": 0.4}, dr="id:d2"), _leaf({"0.5": 0.3}, "cat", "tall"))
        assert _cat(backend, 0.2, 0.3) == ["id:d1"]
        assert _cat(backend, 0.2, 0.3, ck="0.5") == ["id:d1"]  # the feature's roll-up of the subclass
        assert _cat(backend, 0.2, 0.3, ck="0.5", s="tall") == ["id:d1"]
        step(2, _leaf({"": 0.9}), _leaf({"0.5": 0.7}, "cat", "tall"))  # d1's values leave [0.2, 0.3]
        assert _cat(backend, 0.2, 0.3) == []
        assert _cat(backend, 0.2, 0.3, ck="0.5") == [] and _cat(backend, 0.2, 0.3, ck="0.5", s="tall") == []
        assert _cat(backend, 0.6, 1.0) == ["id:d1"] and _cat(backend, 0.7, 0.7, ck="0.5", s="tall") == ["id:d1"]
        step(3, _leaf({"": 0.22}, dr="id:d2"), _leaf({"0.5": 0.21}, "cat", "tall"))  # d2 in, d1's subclass in
        assert _cat(backend, 0.2, 0.3) == ["id:d2"]
        assert _cat(backend, 0.2, 0.3, ck="0.5", s="tall") == ["id:d1"]
        assert _cat(backend, 0.0, 1.0) == ["id:d1", "id:d2"]
    finally:
        backend.close()


def test_node_disappears_from_the_index_with_its_leaf(tmp_path: Path) -> None:
    """An annotation replaced by one on another feature: the old feature's node is gone from filters."""
    backend = SqlStateBackend.sqlite(tmp_path / "s.sqlite3")
    try:
        for n, f in enumerate(["cat", "dog"], start=1):
            state = CachedState(backend)
            ops = MessageOps("r", annotations=[AnnotationUpdate("u1", (_leaf({"": 0.5}, f),))])
            state.prefetch([ops])
            apply_message(state, ops)
            backend.commit(GROUP, state.take_changes(), {P0: n}, {P0: n - 1 if n > 1 else None})
        assert backend.rows_in_range("r", "am", "", 1, "cat", "", None, None) == []
        assert backend.rows_in_range("r", "am", "", 1, "dog", "", None, None) == ["id:d1"]
        assert backend._all("SELECT f FROM rs_node_nums", ()) == [("dog",)]
    finally:
        backend.close()


def test_node_value_index_of_the_previous_layout_is_moved_on_open(tmp_path: Path) -> None:
    """A store whose node values sit in rs_node_values (row per node + a value index) keeps its
    filters: opening it moves the rows into rs_node_nums and drops the old table."""
    import sqlite3

    path = tmp_path / "s.sqlite3"
    SqlStateBackend.sqlite(path).close()
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE rs_node_values (run TEXT NOT NULL, dr TEXT NOT NULL, metric TEXT NOT NULL, ck TEXT NOT NULL, "
        "lvl INTEGER NOT NULL, f TEXT NOT NULL, s TEXT NOT NULL, num DOUBLE PRECISION NOT NULL, "
        "PRIMARY KEY (run, dr, metric, ck, lvl, f, s)) WITHOUT ROWID"
    )
    conn.executemany(
        "INSERT INTO rs_node_values VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [("r", "id:d1", "am", "", 1, "cat", "", 0.25), ("r", "id:d2", "am", "", 1, "cat", "", 0.75)],
    )
    conn.commit()
    conn.close()
    backend = SqlStateBackend.sqlite(path)
    try:
        assert backend.rows_in_range("r", "am", "", 1, "cat", "", 0.2, 0.3) == ["id:d1"]
        assert sorted(backend.rows_in_range("r", "am", "", 1, "cat", "", None, None)) == ["id:d1", "id:d2"]
        assert backend._all("SELECT name FROM sqlite_master WHERE name = 'rs_node_values'", ()) == []
    finally:
        backend.close()


# ---- several processes opening one PostgreSQL store at once -----------------------------------


def _open_at_once(dsn: str, n: int) -> list[BaseException]:
    """Open (and close) n backends on one DSN from n threads released together; what they raised."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def open_one() -> None:
        barrier.wait()
        try:
            SqlStateBackend.postgres(dsn).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


@pytest.mark.postgres
def test_concurrent_opens_of_a_new_postgres_store(tmp_path: Path) -> None:
    """Replicas (and each one's query API) open the store at the same moment: creating the schema
    must not fail one of them. Plain CREATE TABLE IF NOT EXISTS races in PostgreSQL (a duplicate
    key in pg_type); the drill caught an aggregator exiting 1 from it."""
    dsn = os.environ.get("RUNSTREAM_TEST_POSTGRES_DSN")
    if not dsn:
        pytest.skip("RUNSTREAM_TEST_POSTGRES_DSN is not set (.ci/run starts a private PostgreSQL)")
    import psycopg

    base, _, _ = dsn.rpartition("/")
    for attempt in range(5):  # a fresh, empty database per round: the race is only on creation
        name = f"runstream_open_race_{os.getpid()}_{attempt}"
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        try:
            errors = _open_at_once(f"{base}/{name}", 8)
            assert errors == [], f"round {attempt}: {errors[0]!r}"
        finally:
            with psycopg.connect(dsn, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_wal_is_checkpointed_between_commits_not_inside_them(tmp_path: Path) -> None:
    """The writer's COMMIT never copies the WAL into the database (autocheckpoint off); the
    checkpointer thread does, so the database file catches up while the backend stays open."""
    path = tmp_path / "s.sqlite3"
    backend = SqlStateBackend.sqlite(path)
    try:
        assert backend._all("PRAGMA wal_autocheckpoint", ()) == [(0,)]
        state = CachedState(backend)
        ops = MessageOps("r", metric_rows=[_leaf({"": i / 7}, dr=f"id:d{i}") for i in range(3000)])
        apply_message(state, ops)
        before = path.stat().st_size
        backend.commit(GROUP, state.take_changes(), {P0: 1}, {P0: None})
        deadline = time.monotonic() + 10
        while path.stat().st_size <= before + 100_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.stat().st_size > before + 100_000, "the WAL was not checkpointed into the database"
    finally:
        backend.close()
