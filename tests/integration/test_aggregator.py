"""The aggregator end to end: real broker, real `python -m runstream run --role aggregator`
process, real HTTP; every value the API returns equals a from-scratch recomputation."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aggregator_harness import (
    AggProcess,
    Reference,
    agg_env,
    check_api,
    encode_events,
    event,
    read_topic,
    wait_caught_up,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NonInteractiveExampleWarning
from kafka_io import produce

from consumers.dlq.headers import DlqHeaders
from service.aggregation import (
    AggregateError,
    AnnotationUpdate,
    MemoryState,
    MessageOps,
    MetricLeaf,
    apply_message,
    numeric_value,
)
from service.kafka import create_topics
from service.state import CachedState, SqlStateBackend, decode_tree


def _topics(bootstrap: str, unique_id: Callable[[str], str], partitions: int = 3) -> dict[str, str]:
    topics = {"predictions": unique_id("pred"), "metrics": unique_id("met"), "dlq": unique_id("dlq")}
    asyncio.run(create_topics(bootstrap, [topics["predictions"], topics["metrics"]], partitions=partitions))
    asyncio.run(create_topics(bootstrap, [topics["dlq"]], partitions=1))
    return topics


class Setup:
    def __init__(self, bootstrap: str, topics: dict[str, str], group: str, store: str, tmp: Path) -> None:
        self.bootstrap, self.topics, self.group, self.store, self.tmp = bootstrap, topics, group, store, tmp
        self.procs: list[AggProcess] = []

    def process(self, name: str = "agg") -> AggProcess:
        p = AggProcess(agg_env(self.bootstrap, self.topics, self.group, self.store), self.tmp, self.tmp / f"{name}.log")
        self.procs.append(p)
        return p

    @property
    def input_topics(self) -> list[str]:
        return [self.topics["predictions"], self.topics["metrics"]]


@pytest.fixture
def sqlite_setup(kafka_bootstrap: str, unique_id: Callable[[str], str], tmp_path: Path) -> Iterator[Setup]:
    s = Setup(
        kafka_bootstrap,
        _topics(kafka_bootstrap, unique_id),
        unique_id("agg"),
        str(tmp_path / "state.sqlite3"),
        tmp_path,
    )
    yield s
    for p in s.procs:
        p.stop()


async def _dlq_counts(s: Setup, run: str) -> Counter[str]:
    recs = await read_topic(s.bootstrap, s.topics["dlq"])
    out: Counter[str] = Counter()
    for r in recs:
        if r.key == run.encode():
            h = DlqHeaders.from_kafka(r.headers)
            assert h.consumer_group == s.group and h.source_topic in s.input_topics
            out[h.error_class] += 1
    return out


def _slices(rng: random.Random) -> list[list[str]]:
    rows = ["id:d1", "id:d2", "gk:g3", "gk:g4", "id:d5"]
    return [rng.sample(rows, rng.randint(1, 4)) for _ in range(2)]


_counter = iter(range(10**9))


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(events=st.lists(event(), min_size=3, max_size=12), seed=st.integers(0, 2**16))
def test_random_streams_equal_recomputation(
    sqlite_setup: Setup, events: list[tuple[str, dict[str, Any]]], seed: int
) -> None:
    """All granularities and aggregations, replacements, explicit-over-roll-up, confusion matrices,
    confidence keys, customMetrics with re-sent uuids, conflicts and domain errors to the DLQ."""
    s = sqlite_setup
    if not s.procs:
        p = s.process()
        p.start()
        asyncio.run(p.wait_http())
    run = f"run-{seed}-{next(_counter)}"
    ref = Reference()
    for i, (kind, body) in enumerate(events):
        ref.apply(i, kind, body)

    async def go() -> None:
        await produce(s.bootstrap, encode_events(run, s.topics, events))
        await wait_caught_up(s.bootstrap, s.input_topics, s.group, s.store)
        problems = await check_api(s.procs[0].url, run, ref, _slices(random.Random(seed)))
        assert not problems, "\n".join(problems)
        assert await _dlq_counts(s, run) == Counter(c for _i, c in ref.rejected)

    asyncio.run(go())


def _pool(n: int) -> list[tuple[str, dict[str, Any]]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        return [event().example() for _ in range(n)]


def _stream(rng: random.Random, runs: list[str], n: int) -> list[tuple[str, tuple[str, dict[str, Any]]]]:
    pool = _pool(80)
    return [(rng.choice(runs), rng.choice(pool)) for _ in range(n)]


async def _produce_paced(s: Setup, stream: list[tuple[str, tuple[str, dict[str, Any]]]], chunk: int = 100) -> None:
    for i in range(0, len(stream), chunk):
        part = stream[i : i + chunk]
        await produce(s.bootstrap, [e for run, ev in part for e in encode_events(run, s.topics, [ev])])
        await asyncio.sleep(0.05)


def _references(stream: list[tuple[str, tuple[str, dict[str, Any]]]]) -> dict[str, Reference]:
    refs: dict[str, Reference] = {}
    for i, (run, (kind, body)) in enumerate(stream):
        refs.setdefault(run, Reference()).apply(i, kind, body)
    return refs


async def _check_all(url: str, refs: dict[str, Reference], rng: random.Random) -> None:
    for run, ref in refs.items():
        problems = await check_api(url, run, ref, _slices(rng))
        assert not problems, f"{run}:\n" + "\n".join(problems[:30])


async def test_kill_9_mid_stream_and_restart(sqlite_setup: Setup) -> None:
    s = sqlite_setup
    rng = random.Random(7)
    stream = _stream(rng, [f"kill-run-{i}" for i in range(4)], 3000)
    refs = _references(stream)
    first = s.process("first")
    first.start()
    await first.wait_http()
    producing = asyncio.create_task(_produce_paced(s, stream))
    await asyncio.sleep(1.5)
    assert not producing.done(), "stream finished before the kill; make it longer"
    first.kill9()
    second = s.process("second")
    second.start()
    await second.wait_http()
    await producing
    await wait_caught_up(s.bootstrap, s.input_topics, s.group, s.store)
    await _check_all(second.url, refs, rng)
    # every rejected message is in the DLQ (at least once: a kill may repeat a DLQ write)
    dlq = await read_topic(s.bootstrap, s.topics["dlq"])
    got = {(DlqHeaders.from_kafka(r.headers).source_topic, r.key) for r in dlq}
    assert len(got) > 0 or not any(ref.rejected for ref in refs.values())
    assert sum(len(r.rejected) for r in refs.values()) <= len(dlq)
    assert second.stop() == 0


@pytest.mark.postgres
async def test_two_replicas_on_postgres_with_rebalance(
    kafka_bootstrap: str, unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    dsn = os.environ.get("RUNSTREAM_TEST_POSTGRES_DSN")
    if not dsn:
        pytest.skip("RUNSTREAM_TEST_POSTGRES_DSN is not set (see bench/README.md / docs for a private PostgreSQL)")
    topics = await asyncio.to_thread(_topics, kafka_bootstrap, unique_id, 4)
    s = Setup(kafka_bootstrap, topics, unique_id("agg-pg"), dsn, tmp_path)
    rng = random.Random(11)
    stream = _stream(rng, [f"pg-run-{unique_id('r')}" for _ in range(8)], 2400)
    refs = _references(stream)
    a, b = s.process("a"), s.process("b")
    try:
        a.start()
        await a.wait_http()
        await _produce_paced(s, stream[:1200])
        b.start()  # rebalance while the stream continues
        await b.wait_http()
        await _produce_paced(s, stream[1200:2000])
        assert a.stop() == 0  # second rebalance: b takes everything over
        await _produce_paced(s, stream[2000:])
        await wait_caught_up(s.bootstrap, s.input_topics, s.group, s.store)
        await _check_all(b.url, refs, rng)
    finally:
        for p in s.procs:
            p.stop()


# ---- the durable cache vs. the plain-dict engine (no broker: SQLite file + real SQL) --------

_ST_METRICS = {"am": "ARITHMETIC_MEAN", "gm": "GEOMETRIC_MEAN", "cm": "CONFUSION_MATRIX"}


@st.composite
def _ops(draw: st.DrawFn) -> MessageOps:
    def leaf() -> MetricLeaf:
        m = draw(st.sampled_from(list(_ST_METRICS)))
        one = (lambda: tuple(draw(st.integers(0, 9)) for _ in range(4))) if m == "cm" else (
            lambda: float(draw(st.integers(0, 50)))
        )
        value = {"": one()} if draw(st.booleans()) else {k: one() for k in ("0.25", "0.5")}
        f, s = draw(st.sampled_from([(None, None), ("cat", None), ("cat", "tall"), ("dog", "big")]))
        return MetricLeaf(m, _ST_METRICS[m], draw(st.sampled_from(["id:a", "id:b", "gk:c"])), f, s, value)  # type: ignore[arg-type]

    run = draw(st.sampled_from(["r1", "r2"]))
    if draw(st.booleans()):
        return MessageOps(run, [leaf() for _ in range(draw(st.integers(1, 3)))])
    anns = [
        AnnotationUpdate(draw(st.sampled_from(["u1", "u2"])), tuple(x for x in (leaf(),) if x.metric == "am"))
        for _ in range(draw(st.integers(1, 2)))
    ]
    return MessageOps(run, annotations=anns)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(_ops(), min_size=1, max_size=6), min_size=1, max_size=6), cache=st.integers(0, 30))
def test_cached_state_with_prefetch_equals_memory_state(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[MessageOps]], cache: int
) -> None:
    """Bulk prefetch, a tiny eviction bound and take-then-commit (pipelined) leave the store equal
    to the plain-dict engine; every key a batch reads was foreseen by prefetch (no point loads)."""
    path = tmp_path_factory.mktemp("cache") / "s.sqlite3"
    backend = SqlStateBackend.sqlite(path)
    mem, cached = MemoryState(), CachedState(backend, max_clean=cache)
    try:
        for n, batch in enumerate(batches):
            cached.prefetch(batch)
            before = cached.loads
            for ops in batch:
                for target in (mem, cached):
                    with contextlib.suppress(AggregateError):
                        apply_message(target, ops)
            assert cached.loads == before, "a key was read that prefetch did not load"
            ch = cached.take_changes()
            backend.commit("g", ch, {("t", 0): n + 1}, {("t", 0): n or None})
            cached.committed()
        fresh = CachedState(backend, max_clean=0)
        for k, v in mem.nodes.items():
            got = fresh.get_node(k)
            assert got is not None and got == v, k
        for k, a in mem.run_aggs.items():
            assert fresh.get_run_agg(k) == a, k
        for k, lv in mem.leaves.items():
            assert fresh.get_leaf(k) == lv, k
        # one stored tree per (run, metric, data row) that has a leaf or a node, and no other
        trees = {(k[0], k[1], k[2]) for k in mem.leaves} | {(k[0], k[1], k[3]) for k in mem.nodes}
        stored = backend.load_many("rs_trees", sorted(trees))
        assert len(stored) == len(trees)
        assert len(backend._all("SELECT 1 FROM rs_trees", ())) == len(trees)  # deletions landed too
        for run, metric, dr, raw, _num in stored:
            tree = decode_tree(raw)
            assert len(tree.nodes) == sum(1 for k in mem.nodes if (k[0], k[1], k[3]) == (run, metric, dr))
            assert len(tree.leaves) == sum(1 for k in mem.leaves if k[:3] == (run, metric, dr))
        # filters (indexed node values, every level and confidence key) select what the engine holds
        want: dict[tuple[Any, ...], dict[str, float]] = {}
        for (run, metric, ck, dr, lvl, f, s), value in mem.nodes.items():
            num = numeric_value(value)
            group = want.setdefault((run, metric, ck, lvl, f, s), {})
            if num is not None:
                group[dr] = num
        for (run, metric, ck, lvl, f, s), rows in want.items():
            assert sorted(backend.rows_in_range(run, metric, ck, lvl, f, s, None, None)) == sorted(rows)
            for dr, num in rows.items():
                got = backend.rows_in_range(run, metric, ck, lvl, f, s, num, num)
                assert sorted(got) == sorted(d for d, x in rows.items() if x == num), (dr, num)
        stored_groups = backend._all("SELECT DISTINCT run, metric, ck, lvl, f, s FROM rs_node_nums", ())
        assert {(r, m, ck, int(lvl), f, s) for r, m, ck, lvl, f, s in stored_groups} <= set(want)
    finally:
        backend.close()
