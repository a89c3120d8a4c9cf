"""Several versions of one annotation in one uploader batch: only the last (offset order) is sent,
since Labelbox fails a uuid repeated within an import; the earlier ones are superseded, their offsets
committed, nothing dead-lettered. Real broker, real local Labelbox API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from kafka_io import end_offsets
from prometheus_client import CollectorRegistry
from uploader_harness import (
    event,
    local_labelbox,
    make_topics,
    prediction_row,
    produce,
    running_uploader,
    seed,
    settings_for,
    wait_committed,
    wait_until,
)

UUID = "6f1c3e2a-5b4d-4c8e-9a7f-0d1e2f3a4b5c"
OTHER = "7a2d4f3b-6c5e-4d9f-8b0a-1e2f3a4b5c6d"


async def test_last_version_in_a_batch_wins_and_the_rest_are_superseded(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    t = await make_topics(new_topic, unique_id)
    run = unique_id("mr")
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=[run], data_rows=[{"id": "dr-1"}, {"id": "dr-2"}])
        versions = [{**prediction_row("dr-1", "cat", v), "uuid": UUID} for v in range(5)]
        msgs: list[tuple[str, bytes | None, bytes | None]] = [
            (t.predictions, run.encode(), event(run, predictions=[versions[0], versions[1]])),  # twice in one message
            (t.predictions, run.encode(), event(run, predictions=[{**prediction_row("dr-2"), "uuid": OTHER}])),
            *[(t.predictions, run.encode(), event(run, predictions=[v])) for v in versions[2:]],
        ]
        await produce(kafka_bootstrap, msgs)

        registry = CollectorRegistry()
        # Every message is on the broker before the uploader starts, and the linger is long: one batch.
        settings = settings_for(kafka_bootstrap, t, server.url, batch_linger_ms=3000)
        async with running_uploader(settings, registry):

            async def stored() -> bool:
                return (await server.db(server.store.counts, run))["predictions"] == 2

            await wait_until(stored, 60, "both uuids stored")
            await wait_committed(kafka_bootstrap, t)
            superseded = registry.get_sample_value("runstream_rows_superseded_total", {"group": t.group})
            delivered = registry.get_sample_value(
                "runstream_events_total", {"group": t.group, "topic": t.predictions, "outcome": "delivered"}
            )
        preds = {p["uuid"]: p["row"] for p in await server.db(server.store.predictions, run)}
        assert preds[UUID]["bbox"] == versions[-1]["bbox"]  # the last version
        (imp,) = await server.db(server.store.imports_of, run)
        assert (imp.total_rows, imp.failure_rows) == (2, 0)  # one row per uuid, none failed
        assert superseded == 4
        assert delivered == len(msgs)
        assert not any((await end_offsets(kafka_bootstrap, [t.dlq])).values())
