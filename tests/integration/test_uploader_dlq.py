"""Every bad input lands in the DLQ with the right class and a message naming the problem,
while the valid events around it are delivered and all offsets are committed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client import CollectorRegistry
from uploader_harness import (
    event,
    local_labelbox,
    make_topics,
    metric_row,
    prediction_row,
    produce,
    read_dlq,
    running_uploader,
    seed,
    settings_for,
    wait_committed,
    wait_until,
)

BBOX = {"top": 1, "left": 1, "height": 1, "width": 1}


async def test_bad_inputs_go_to_the_dlq_and_valid_ones_land(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    t = await make_topics(new_topic, unique_id, partitions=1)  # one partition: bad and good interleave
    mr = unique_id("mr")
    k = mr.encode()
    bad: list[tuple[str, bytes, str, str]] = [  # (topic, value, error class, text in message)
        (t.predictions, b'{"model_run_id": ', "json", "not valid JSON"),
        (t.predictions, b"[1, 2]", "json", "expected a JSON object"),
        (t.predictions, event(mr, predictions="nope"), "schema", "predictions"),
        (t.predictions, event(mr, predictions=[{"name": "cat", "bbox": BBOX}]), "schema", "dataRow"),
        (t.predictions, event(mr, predictions=[{"dataRow": {"id": "dr-1", "globalKey": "g"}, "name": "cat",
                                                "bbox": BBOX}]), "schema", "exactly one of id or globalKey"),
        (t.metrics, event(mr, metrics=[metric_row("dr-1", " IoU ")]), "schema", "reserved"),
        (t.metrics, event(mr, metrics=[{"dataRow": {"id": "dr-1"}, "metricName": "cm", "metricValue": [1, 2, 3],
                                        "aggregation": "CONFUSION_MATRIX"}]), "schema", "metricValue"),
        (t.metrics, b'{"model_run_id":"' + k + b'","metrics":[{"dataRow":{"id":"dr-1"},"metricName":"m",'
         b'"metricValue":NaN}]}', "schema", "finite"),
        (t.metrics, b'{"model_run_id":"' + k + b'","metrics":[{"dataRow":{"id":"dr-1"},"metricName":"m",'
         b'"metricValue":1e999}]}', "json", "infinity"),
        (t.predictions, event(mr, predictions=[{"dataRow": {"id": "dr-1"}, "name": "seg", "mask": {"png": "x"},
                                                "customMetrics": [{"name": "a", "value": 1}]}]),
         "schema", "mask"),
        (t.predictions, event(mr, predictions=[prediction_row("dr-1", "x" * 9000)]), "too_large", "over the limit"),
        (t.labels, event(mr, label_ids=["lab-1"], project_id="proj-1"), "schema", "exactly one of"),
        (t.labels, event(mr, label_ids=["no-such-label"]), "labelbox.rejected", "no-such-label"),
        (t.predictions, event(mr, predictions=[prediction_row("dr-unknown", "cat", 99)]),
         "labelbox.row_failed", "dr-unknown"),
    ]
    msgs: list[tuple[str, bytes | None, bytes | None]] = []
    good = 0
    for i, (topic, value, _, _) in enumerate(bad):
        msgs.append((t.predictions, k, event(mr, predictions=[prediction_row(f"dr-{i % 5}", "cat", i)])))
        good += 1
        msgs.append((topic, k, value))
    msgs.append((t.labels, k, event(mr, label_ids=["lab-1"])))
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=[mr], data_rows=[{"id": f"dr-{i}"} for i in range(5)], projects=[{"id": "proj-1"}],
                   labels=[{"id": "lab-1", "projectId": "proj-1", "dataRowId": "dr-1"}])
        await produce(kafka_bootstrap, msgs)
        registry = CollectorRegistry()
        settings = settings_for(kafka_bootstrap, t, server.url, max_message_bytes=8000)
        async with running_uploader(settings, registry) as (_, status):
            async def landed() -> bool:
                return (await server.db(server.store.counts, mr))["predictions"] >= good

            await wait_until(landed, 60, "valid predictions stored")
            await wait_committed(kafka_bootstrap, t)
            assert status.fatal is None
        assert (await server.db(server.store.counts, mr))["predictions"] == good
        labelled = {m["labelId"] for m in await server.db(server.store.run_data_rows, mr)}
        assert "lab-1" in labelled

        dlq = await read_dlq(kafka_bootstrap, t.dlq, expect=len(bad))
        assert len(dlq) == len(bad), [(h.error_class, h.error_message) for _, _, h in dlq]
        by_value = {v: (key, h) for key, v, h in dlq}
        for topic, value, cls, text in bad:
            assert value in by_value, (cls, text)
            key, h = by_value[value]
            assert key == k  # original key and value bytes, unchanged
            assert h.error_class == cls, (h.error_class, h.error_message)
            assert text in h.error_message, (text, h.error_message)
            assert h.source_topic == topic and h.consumer_group == t.group
        dlq_count = registry.get_sample_value("runstream_dlq_messages_total",
                                              {"group": t.group, "error_class": "schema"})
        assert dlq_count == sum(1 for b in bad if b[2] == "schema")
