"""``runstream demo`` against the real broker: the events it reports are on the topics, keyed by model run."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from test_backfill_kafka import drain, topics_settings

from devstack.demo_data import demo_catalog
from service.errors import EventValidationError
from service.events import parse_event

REPO = Path(__file__).resolve().parents[2]


async def test_demo_produces_the_stream(kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]]) -> None:
    settings = await topics_settings(kafka_bootstrap, new_topic)
    env = {
        **os.environ,
        "RUNSTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "RUNSTREAM_TOPIC_PREDICTIONS": settings.topic_predictions,
        "RUNSTREAM_TOPIC_METRICS": settings.topic_metrics,
        "RUNSTREAM_TOPIC_LABELS": settings.topic_labels,
        "RUNSTREAM_TOPIC_DLQ": settings.topic_labels + "-dlq",
    }
    cmd = [sys.executable, "-m", "runstream", "demo", "--model-runs", "2", "--count", "150", "--rate", "0"]
    proc = await asyncio.to_thread(
        subprocess.run, [*cmd, "--bad-fraction", "0.2", "--seed", "5"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "sent 150 events" in proc.stdout

    run_ids = {m.id.encode() for m in demo_catalog(5, model_runs=2).model_runs}
    good = bad = 0
    for kind, topic in (
        ("prediction", settings.topic_predictions),
        ("metric", settings.topic_metrics),
        ("label", settings.topic_labels),
    ):
        for key, value in await drain(kafka_bootstrap, topic):
            assert key in run_ids
            try:
                parse_event(kind, value, max_bytes=1 << 20)  # type: ignore[arg-type]
                good += 1
            except EventValidationError:
                bad += 1
    assert good + bad == 150
    assert f"{bad} bad ones" in proc.stdout and bad > 10
