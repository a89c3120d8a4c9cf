"""Backfill against the real broker: exactly the good rows arrive, keyed by model run, on the right topics."""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from service.backfill import run_backfill
from service.config import Settings
from service.events import LabelEvent, MetricEvent, PredictionEvent, parse_event

REPO = Path(__file__).resolve().parents[2]


async def drain(bootstrap: str, topic: str, *, idle_s: float = 1.5) -> list[tuple[bytes | None, bytes | None]]:
    """Every message on ``topic`` (from the start), stopping once nothing arrived for ``idle_s``."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    out: list[tuple[bytes | None, bytes | None]] = []
    try:
        quiet_since = asyncio.get_running_loop().time()
        while asyncio.get_running_loop().time() - quiet_since < idle_s:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                out.extend((r.key, r.value) for r in records)
                quiet_since = asyncio.get_running_loop().time()
    finally:
        await consumer.stop()
    return out


async def topics_settings(bootstrap: str, new_topic: Callable[..., Awaitable[str]]) -> Settings:
    return Settings(
        kafka_bootstrap=bootstrap,
        topic_predictions=await new_topic(partitions=3, prefix="pred"),
        topic_metrics=await new_topic(partitions=3, prefix="met"),
        topic_labels=await new_topic(partitions=3, prefix="lab"),
    )


def pred(gk: str) -> dict[str, Any]:
    return {"dataRow": {"globalKey": gk}, "name": "cat", "bbox": {"top": 1, "left": 2, "height": 3, "width": 4}}


def write_inputs(tmp: Path) -> list[Path]:
    rows = [
        orjson.dumps(pred("a1")),
        orjson.dumps({"dataRow": {"id": "d1"}, "metricValue": 0.5, "metricName": "acc"}),
        b"{broken",
        orjson.dumps(pred("a2")),
        orjson.dumps({"dataRow": {"id": "d2", "globalKey": "g"}, "name": "cat", "point": {"x": 1, "y": 2}}),
        orjson.dumps({"dataRow": {"id": "d3"}, "metricValue": [1, 2, 3, 4], "metricName": "cm"}),
    ]
    plain = tmp / "rows.ndjson"
    plain.write_bytes(b"\n".join(rows) + b"\n")
    events = [
        orjson.dumps({"model_run_id": "mr-B", "predictions": [pred("b1"), pred("b2")]}),
        orjson.dumps({"model_run_id": "mr-B", "metrics": [{"data_row": {"id": "d"}, "metric_name": "iou", "value": 1}]}),  # noqa: E501
        orjson.dumps({"model_run_id": "mr-C", "label_ids": ["l1", "l2"]}),
        orjson.dumps({"model_run_id": "mr-C", "metrics": [{"data_row": {"id": "d"}, "metric_name": "m", "value": 2}]}),
    ]
    zipped = tmp / "events.jsonl"  # gzip without a .gz name: detected by magic bytes
    zipped.write_bytes(gzip.compress(b"\n".join(events) + b"\n"))
    return [plain, zipped]


async def test_good_rows_arrive_keyed_by_model_run_and_bad_lines_are_reported(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], tmp_path: Path
) -> None:
    settings = await topics_settings(kafka_bootstrap, new_topic)
    files = write_inputs(tmp_path)
    stats = await run_backfill(files, settings, model_run="mr-A")

    assert [str(b).split(": ")[0] for b in stats.bad] == [f"{files[0]}:3", f"{files[0]}:5", f"{files[1]}:2"]
    assert stats.bad[1].field == "dataRow" and stats.bad[2].field == "metrics[0].metric_name"
    assert stats.bad_lines == 3

    preds = await drain(kafka_bootstrap, settings.topic_predictions)
    mets = await drain(kafka_bootstrap, settings.topic_metrics)
    labels = await drain(kafka_bootstrap, settings.topic_labels)

    def parsed(kind: Any, msgs: list[tuple[bytes | None, bytes | None]]) -> list[Any]:
        out = []
        for key, value in msgs:
            ev = parse_event(kind, value, max_bytes=1 << 20)
            assert key == ev.model_run_id.encode()
            out.append(ev)
        return out

    p = parsed("prediction", preds)
    assert all(isinstance(e, PredictionEvent) for e in p)
    assert sorted(r.data_row.global_key for e in p for r in e.predictions) == ["a1", "a2", "b1", "b2"]
    m = parsed("metric", mets)
    assert all(isinstance(e, MetricEvent) for e in m)
    assert sorted((e.model_run_id, r.metric_name) for e in m for r in e.metrics) == [
        ("mr-A", "acc"),
        ("mr-A", "cm"),
        ("mr-C", "m"),
    ]
    (lab,) = parsed("label", labels)
    assert isinstance(lab, LabelEvent) and lab.label_ids == ["l1", "l2"]
    assert stats.events == len(preds) + len(mets) + len(labels)
    assert stats.rows == 4 + 3


async def test_rate_limit_is_honoured(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], tmp_path: Path
) -> None:
    settings = await topics_settings(kafka_bootstrap, new_topic)
    path = tmp_path / "ev.jsonl"
    path.write_bytes(
        b"".join(
            orjson.dumps({"model_run_id": f"mr-{i % 3}", "global_keys": [f"g{i}"]}) + b"\n" for i in range(40)
        )
    )
    stats = await run_backfill([path], settings, rate=100)
    assert stats.events == 40
    assert stats.elapsed_s >= 0.35  # 40 events at 100/s: the 40th may go at 0.39 s
    assert len(await drain(kafka_bootstrap, settings.topic_labels)) == 40


def run_cli(args: list[str], settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "RUNSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
        "RUNSTREAM_TOPIC_PREDICTIONS": settings.topic_predictions,
        "RUNSTREAM_TOPIC_METRICS": settings.topic_metrics,
        "RUNSTREAM_TOPIC_LABELS": settings.topic_labels,
    }
    return subprocess.run(
        [sys.executable, "-m", "runstream", "backfill", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_cli_reports_file_and_line_and_exits_1_on_bad_lines(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], tmp_path: Path
) -> None:
    settings = await topics_settings(kafka_bootstrap, new_topic)
    files = write_inputs(tmp_path)
    report = tmp_path / "report.jsonl"
    proc = await asyncio.to_thread(
        run_cli, [*map(str, files), "--model-run", "mr-A", "--report", str(report)], settings
    )
    assert proc.returncode == 1, proc.stderr
    assert f"{files[0]}:3: not valid JSON" in proc.stderr
    assert f"{files[1]}:2: metrics[0].metric_name:" in proc.stderr
    assert "10 lines read" in proc.stdout and "sent 5 events" in proc.stdout and "3 bad lines" in proc.stdout
    assert [orjson.loads(x)["line"] for x in report.read_text().splitlines()] == [3, 5, 2]
    # only good lines: exit 0
    good = tmp_path / "good.ndjson"
    good.write_bytes(orjson.dumps(pred("z")) + b"\n")
    ok = await asyncio.to_thread(run_cli, [str(good), "--model-run", "mr-Z"], settings)
    assert ok.returncode == 0, ok.stderr
    # nothing to send: exit 1
    empty = tmp_path / "empty.ndjson"
    empty.write_bytes(b"\n")
    nothing = await asyncio.to_thread(run_cli, [str(empty)], settings)
    assert nothing.returncode == 1 and "nothing to send" in nothing.stderr


async def test_cli_exits_2_when_kafka_is_unreachable(tmp_path: Path) -> None:
    good = tmp_path / "good.ndjson"
    good.write_bytes(orjson.dumps(pred("z")) + b"\n")
    settings = Settings(kafka_bootstrap="127.0.0.1:1")
    proc = await asyncio.to_thread(run_cli, [str(good), "--model-run", "m"], settings)
    assert proc.returncode == 2 and "cannot connect to Kafka" in proc.stderr


async def test_worker_processes_give_the_same_result(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], tmp_path: Path
) -> None:
    settings = await topics_settings(kafka_bootstrap, new_topic)
    files = write_inputs(tmp_path)
    stats = await run_backfill(files, settings, model_run="mr-A", workers=2)
    assert [(b.file, b.line) for b in stats.bad] == [(str(files[0]), 3), (str(files[0]), 5), (str(files[1]), 2)]
    assert (stats.lines_read, stats.rows, stats.events, stats.bad_lines) == (10, 7, 5, 3)
    preds = await drain(kafka_bootstrap, settings.topic_predictions)
    got = sorted(
        (key, r.data_row.global_key)
        for key, value in preds
        for r in parse_event("prediction", value, max_bytes=1 << 20).predictions  # type: ignore[union-attr]
    )
    assert got == [(b"mr-A", "a1"), (b"mr-A", "a2"), (b"mr-B", "b1"), (b"mr-B", "b2")]
