"""Errors settled at the model run's scope, through the real local Labelbox API and a real broker:
one Labelbox call dead-letters a whole batch of a model run that does not exist, later messages of
that run are dead-lettered without any call while the verdict holds, one probe decides again after
it expires, and a healthy run next to it is not affected."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client import CollectorRegistry
from uploader_harness import (
    event,
    local_labelbox,
    make_topics,
    prediction_row,
    produce,
    read_dlq,
    running_uploader,
    seed,
    settings_for,
    wait_committed,
    wait_until,
)

from devstack.local_labelbox import LocalLabelbox
from devstack.local_labelbox.faults import FaultRule

COUNTED = 1_000_000


def count_requests(server: LocalLabelbox) -> Callable[[], int]:
    """Every /graphql request consumes one use of a zero-latency fault rule: the server's own count."""
    rule: FaultRule = server.add_fault({"kind": "latency", "latencyMs": 0, "count": COUNTED})

    def seen() -> int:
        for r in server.fault_rules:
            if r.rule_id == rule.rule_id:
                return COUNTED - (r.remaining or 0)
        return COUNTED

    return seen


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_missing_model_run_costs_one_call_per_verdict_period(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    t = await make_topics(new_topic, unique_id, partitions=1)
    mr = unique_id("mr-missing")
    k = mr.encode()
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=[], data_rows=[{"id": f"dr-{i}"} for i in range(10)])
        await produce(kafka_bootstrap, [(t.predictions, k, _pred(mr, f"dr-{i % 10}", i)) for i in range(200)])
        registry = CollectorRegistry()
        settings = settings_for(kafka_bootstrap, t, server.url, batch_linger_ms=1000, model_run_reject_ttl_s=10)
        async with running_uploader(settings, registry) as (_, status):
            await wait_until(lambda: _true(status.ready), 30, "uploader ready")
            seen = count_requests(server)  # after the credential check
            dlq = await read_dlq(kafka_bootstrap, t.dlq, 200)
            assert len(dlq) == 200
            assert {h.error_class for _, _, h in dlq} == {"labelbox.model_run"}
            assert all("Resource 'ModelRun' not found" in h.error_message and mr in h.error_message
                       for _, _, h in dlq)
            assert seen() == 1, "one Labelbox call settles the whole batch"
            assert status.ready and status.fatal is None
            g = {"group": t.group}
            assert _value(registry, "runstream_labelbox_rejected_model_runs", **g) == 1
            assert _value(registry, "runstream_labelbox_model_run_rejections_total", **g) == 1

            # while the verdict holds: dead-lettered without a single call
            await produce(kafka_bootstrap, [(t.predictions, k, event(mr, predictions=[prediction_row("dr-1", "c", i)]))
                                            for i in range(200, 500)])
            dlq = await read_dlq(kafka_bootstrap, t.dlq, 500)
            assert len(dlq) == 500
            assert seen() == 1
            assert _value(registry, "runstream_labelbox_rejected_model_runs", **g) == 1, "verdict expired too early"
            await wait_committed(kafka_bootstrap, t)

            # the run is created; once the verdict expires, one probe finds it and the run flows again
            await seed(server, runs=[mr], data_rows=[])
            await server.db(server.store.register_data_rows, mr, [f"dr-{i}" for i in range(10)], None)
            await wait_until(lambda: _true(_value(registry, "runstream_labelbox_rejected_model_runs", **g) == 0),
                             30, "verdict expiry")
            await produce(kafka_bootstrap, [(t.predictions, k, event(mr, predictions=[prediction_row("dr-2", "c", i)]))
                                            for i in range(500, 520)])

            async def landed() -> bool:
                return (await server.db(server.store.counts, mr))["predictions"] >= 20

            await wait_until(landed, 30, "predictions of the now existing run stored")
            await wait_committed(kafka_bootstrap, t)
            assert len(await read_dlq(kafka_bootstrap, t.dlq, 500, timeout=2)) == 500
            assert _value(registry, "runstream_labelbox_model_run_rejections_total", **g) == 1
            assert status.fatal is None


async def test_healthy_run_is_not_affected_by_a_misconfigured_one(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    t = await make_topics(new_topic, unique_id, partitions=2)
    good, bad = unique_id("mr-good"), unique_id("mr-typo")
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=[good], data_rows=[{"id": f"dr-{i}"} for i in range(10)])
        msgs: list[tuple[str, bytes | None, bytes | None]] = []
        for i in range(300):
            msgs.append((t.predictions, good.encode(), _pred(good, f"dr-{i % 10}", i)))
            msgs.append((t.predictions, bad.encode(), _pred(bad, f"dr-{i % 10}", i)))
        seen = count_requests(server)
        await produce(kafka_bootstrap, msgs)
        registry = CollectorRegistry()
        async with running_uploader(settings_for(kafka_bootstrap, t, server.url, model_run_reject_ttl_s=300),
                                    registry) as (_, status):
            async def landed() -> bool:
                return (await server.db(server.store.counts, good))["predictions"] >= 300

            await wait_until(landed, 60, "the healthy run's predictions stored")
            await wait_committed(kafka_bootstrap, t)
            assert status.ready and status.fatal is None
            # one verdict: batches of one run go one after the other, so only its first one called Labelbox
            assert _value(registry, "runstream_labelbox_model_run_rejections_total", group=t.group) == 1
        dlq = await read_dlq(kafka_bootstrap, t.dlq, 300)
        assert len(dlq) == 300
        assert {h.error_class for _, _, h in dlq} == {"labelbox.model_run"}
        assert {k for k, _, _ in dlq} == {bad.encode()}
        assert (await server.db(server.store.counts, good))["predictions"] == 300
        # the misconfigured run cost at most one call per partition's first batch (two runs' batches
        # may race before the verdict lands), not two per message
        bad_calls = seen() - _value(registry, "runstream_labelbox_requests_total",
                                    operation="createModelErrorAnalysisPredictionImport", status_class="2xx")
        assert bad_calls < 60, bad_calls


def _pred(mr: str, data_row: str, i: int) -> bytes:
    return event(mr, predictions=[prediction_row(data_row, "c", i)])


async def _true(v: bool) -> bool:
    return v


async def test_a_429_pauses_every_run_of_the_uploader_for_its_retry_after(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    t = await make_topics(new_topic, unique_id, partitions=2)
    runs = [unique_id("mr-a"), unique_id("mr-b")]
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=runs, data_rows=[{"id": f"dr-{i}"} for i in range(10)])
        for r in runs:
            await server.db(server.store.register_data_rows, r, [f"dr-{i}" for i in range(10)], None)
        registry = CollectorRegistry()
        settings = settings_for(kafka_bootstrap, t, server.url, batch_linger_ms=50)
        async with running_uploader(settings, registry) as (_, status):
            await wait_until(lambda: _true(status.ready), 30, "uploader ready")
            seen = count_requests(server)
            samples: list[tuple[float, int, bool]] = []  # (time, requests so far, 429 still pending)
            limit = server.add_fault({"kind": "rate_limit", "retryAfter": 3, "count": 1,
                                      "operations": ["createModelErrorAnalysisPredictionImport"]})

            async def sample(until: float) -> None:
                loop = asyncio.get_running_loop()
                while loop.time() < until:
                    pending = any(r.rule_id == limit.rule_id for r in server.fault_rules)
                    samples.append((loop.time(), seen(), pending))
                    await asyncio.sleep(0.02)

            async def traffic() -> None:  # both runs keep uploading small batches
                for i in range(40):
                    await produce(kafka_bootstrap, [(t.predictions, r.encode(), _pred(r, f"dr-{i % 10}", i))
                                                    for r in runs])
                    await asyncio.sleep(0.1)

            loop = asyncio.get_running_loop()
            await asyncio.gather(sample(loop.time() + 6.0), traffic())
            hit = next((i for i, s in enumerate(samples) if not s[2]), None)
            assert hit is not None and hit > 0, "the 429 never happened"
            t429 = samples[hit][0]
            # requests already in flight when the 429 was sent may still arrive just after it; none starts later
            during = [n for ts, n, _ in samples if t429 + 0.3 <= ts <= t429 + 2.7]
            after = [n for ts, n, _ in samples if ts >= t429 + 3.5]
            assert during and max(during) == min(during), f"requests reached Labelbox during Retry-After: {during}"
            assert after and max(after) > max(during), "requests did not resume after Retry-After"
            assert _value(registry, "runstream_labelbox_rate_limit_pauses_total") == 1

            async def all_in() -> bool:
                counts = [(await server.db(server.store.counts, r))["predictions"] for r in runs]
                return all(c >= 40 for c in counts)

            await wait_until(all_in, 60, "every prediction stored")
            assert status.fatal is None
