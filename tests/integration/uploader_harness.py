"""Helpers for the uploader integration tests: a real local Labelbox API, a real broker,
producers, DLQ readers and committed-offset checks. Nothing here is mocked."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError
from kafka_io import end_offsets, produce  # noqa: F401  (produce: re-exported for the uploader tests)
from prometheus_client import CollectorRegistry

from consumers.dlq.headers import DlqHeaders
from consumers.runtime import RuntimeStatus
from consumers.uploader import run_uploader
from devstack.local_labelbox import LocalLabelbox
from service.config import Settings

API_KEY = "lb-test-key-0123456789abcdef"
ADMIN = "admin-token"


@dataclass
class Topics:
    predictions: str
    metrics: str
    labels: str
    dlq: str
    group: str


async def make_topics(new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str],
                      partitions: int = 3) -> Topics:
    return Topics(
        predictions=await new_topic(partitions=partitions, prefix="pred"),
        metrics=await new_topic(partitions=partitions, prefix="metric"),
        labels=await new_topic(partitions=partitions, prefix="label"),
        dlq=await new_topic(partitions=1, prefix="dlq"),
        group=unique_id("uploader"),
    )


def settings_for(bootstrap: str, t: Topics, url: str, api_key: str = API_KEY, **over: Any) -> Settings:
    base: dict[str, Any] = dict(
        kafka_bootstrap=bootstrap,
        topic_predictions=t.predictions,
        topic_metrics=t.metrics,
        topic_labels=t.labels,
        topic_dlq=t.dlq,
        uploader_group=t.group,
        labelbox_url=url,
        labelbox_api_key=api_key,
        batch_linger_ms=100,
        retry_initial_s=0.05,
        retry_max_s=0.5,
        shutdown_grace_s=10,
    )
    base.update(over)
    return Settings(**base)


def settings_env(s: Settings) -> dict[str, str]:
    """The same settings as RUNSTREAM_* variables (for subprocess uploaders)."""
    out: dict[str, str] = {}
    for name, value in s.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        out[f"RUNSTREAM_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


@contextlib.asynccontextmanager
async def local_labelbox(tmp_path: Path, **kw: Any) -> AsyncIterator[LocalLabelbox]:
    async with LocalLabelbox(str(tmp_path / "lb.sqlite3"), api_keys=[API_KEY], admin_token=ADMIN, port=0,
                             **kw) as server:
        yield server


async def seed(server: LocalLabelbox, *, runs: list[str], data_rows: list[dict[str, Any]],
               projects: list[dict[str, Any]] | None = None, labels: list[dict[str, Any]] | None = None) -> None:
    store = server.store
    await server.db(store.seed_data_rows, data_rows)
    if projects:
        await server.db(store.seed_projects, projects)
    if labels:
        await server.db(store.seed_labels, labels)
    for r in runs:
        await server.db(lambda r=r: store.create_model_run(name=r, model_id="m", training_metadata=None, run_id=r))


DlqEntry = tuple[bytes | None, bytes | None, DlqHeaders]


async def read_dlq(bootstrap: str, topic: str, expect: int, timeout: float = 30) -> list[DlqEntry]:  # noqa: ASYNC109
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         enable_auto_commit=False, isolation_level="read_committed")
    await c.start()
    out: list[DlqEntry] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = await c.getmany(timeout_ms=300)
            for recs in data.values():
                for r in recs:
                    out.append((r.key, r.value, DlqHeaders.from_kafka(r.headers)))
            if len(out) >= expect and not data:
                break
    finally:
        await c.stop()
    return out


async def committed(bootstrap: str, group: str, topics: list[str]) -> dict[tuple[str, int], int | None]:
    """The group's committed offsets per partition of ``topics`` (None: nothing committed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # On a fresh broker the first group lookup can precede the offsets topic's coordinator.
        for attempt in range(50):
            try:
                got = await admin.list_consumer_group_offsets(group)
                break
            except GroupCoordinatorNotAvailableError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await admin.close()
    ends = await end_offsets(bootstrap, topics)
    out: dict[tuple[str, int], int | None] = dict.fromkeys(ends)
    for tp, meta in got.items():
        if (tp.topic, tp.partition) in out and meta.offset >= 0:
            out[(tp.topic, tp.partition)] = meta.offset
    return out


async def wait_until(cond: Callable[[], Awaitable[bool]], timeout: float, what: str, step: float = 0.2) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def wait_committed(bootstrap: str, t: Topics, timeout: float = 60) -> None:  # noqa: ASYNC109
    topics = [t.predictions, t.metrics, t.labels]

    async def ok() -> bool:
        ends = await end_offsets(bootstrap, topics)
        got = await committed(bootstrap, t.group, topics)
        return all((got.get(tp) or 0) >= end for tp, end in ends.items())

    await wait_until(ok, timeout, "all offsets committed", step=0.5)


@contextlib.asynccontextmanager
async def running_uploader(
    settings: Settings, registry: CollectorRegistry | None = None, status: RuntimeStatus | None = None
) -> AsyncIterator[tuple[asyncio.Task[None], RuntimeStatus]]:
    stop = asyncio.Event()
    status = status or RuntimeStatus()
    task = asyncio.create_task(run_uploader(settings, stop, registry=registry, status=status))
    try:
        yield task, status
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(60):
                await task


def prediction_row(data_row: str, name: str = "cat", i: int = 0, *, gk: bool = False) -> dict[str, Any]:
    return {
        "dataRow": {"globalKey": data_row} if gk else {"id": data_row},
        "name": name,
        "bbox": {"top": i, "left": i + 1, "height": 10, "width": 20},
        "confidence": 0.5,
        "customMetrics": [{"name": "iou", "value": 0.1 + (i % 7) / 10}],
    }


def metric_row(data_row: str, name: str = "acc", value: float = 0.5, feature: str | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"dataRow": {"id": data_row}, "metricName": name, "metricValue": value,
                           "aggregation": "ARITHMETIC_MEAN"}
    if feature:
        row["featureName"] = feature
    return row


def event(model_run: str, **body: Any) -> bytes:
    return orjson.dumps({"model_run_id": model_run, **body})
