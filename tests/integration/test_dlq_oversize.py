"""A dead letter always fits the DLQ: an oversized message never halts the uploader.

A 1.6 MB metric event sent gzip-compressed passes a default broker (1 MiB limit) and is rightly
`too_large`; its dead letter must be written (compressed) and the events after it still upload.
A message that does not fit the DLQ topic even compressed is stored truncated, with its original
size and SHA-256 in headers, and `dlq replay` refuses it. Both run the uploader as a real process.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from uploader_harness import (
    Topics,
    event,
    local_labelbox,
    make_topics,
    prediction_row,
    read_dlq,
    seed,
    settings_env,
    settings_for,
    wait_committed,
    wait_until,
)

from consumers.dlq.headers import DlqHeaders
from consumers.dlq.replay import replay
from consumers.dlq.writer import topic_max_message_bytes
from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]


async def produce_gzip(bootstrap: str, msgs: list[tuple[str, bytes, bytes]]) -> None:
    """What a real producer of big events does: compress (our own producer client does too)."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="gzip",
                         max_request_size=8 * 1_048_576)
    await p.start()
    try:
        for topic, key, value in msgs:
            await p.send_and_wait(topic, value=value, key=key)
    finally:
        await p.stop()


@asynccontextmanager
async def uploader_process(settings: Settings, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
    with log.open("ab") as fh:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "consumers.uploader", cwd=str(ROOT),
                                                    env=env, stdout=fh, stderr=fh)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def big_metric_event(mr: str, target: int) -> bytes:
    rows = []
    size = 0
    i = 0
    while size < target:
        row = {"dataRow": {"id": f"dr-{i % 5}"}, "metricName": f"m{i}", "metricValue": 0.5,
               "aggregation": "ARITHMETIC_MEAN"}
        rows.append(row)
        size += len(orjson.dumps(row)) + 1
        i += 1
    return orjson.dumps({"model_run_id": mr, "metrics": rows})


async def scenario(bootstrap: str, t: Topics, tmp_path: Path, mr: str, big_topic: str, big: bytes
                   ) -> tuple[bytes | None, DlqHeaders]:
    good_before = [(t.predictions, mr.encode(), event(mr, predictions=[prediction_row(f"dr-{i}", "cat", i)]))
                   for i in range(3)]
    good_after = [(t.predictions, mr.encode(), event(mr, predictions=[prediction_row(f"dr-{i}", "dog", i)]))
                  for i in range(5)]
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=[mr], data_rows=[{"id": f"dr-{i}"} for i in range(5)])
        settings = settings_for(bootstrap, t, server.url)
        async with uploader_process(settings, tmp_path / "uploader.log") as proc:
            await produce_gzip(bootstrap, [*good_before, (big_topic, mr.encode(), big), *good_after])

            async def landed() -> bool:
                assert proc.returncode is None, (tmp_path / "uploader.log").read_text()[-3000:]
                return (await server.db(server.store.counts, mr))["predictions"] >= 8

            await wait_until(landed, 90, "every valid prediction around the oversized one stored")
            await wait_committed(bootstrap, t)
        assert proc.returncode == 0, (tmp_path / "uploader.log").read_text()[-3000:]
    (entry,) = await read_dlq(bootstrap, t.dlq, expect=1)
    _, value, headers = entry
    assert headers.error_class == "too_large"
    assert headers.source_topic == big_topic
    return value, headers


async def test_compressed_1_6_mb_metric_event_is_dead_lettered_and_later_events_upload(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    t = await make_topics(new_topic, unique_id, partitions=1)
    mr = unique_id("mr")
    big = big_metric_event(mr, 1_600_000)
    assert 1_600_000 <= len(big) < 1_700_000
    value, headers = await scenario(kafka_bootstrap, t, tmp_path, mr, t.metrics, big)
    assert value == big  # compressed in the DLQ, so it fits whole
    assert not headers.truncated


async def test_letter_too_large_even_compressed_is_truncated_with_size_and_hash_and_replay_refuses_it(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    t = await make_topics(new_topic, unique_id, partitions=1)
    # An input topic that allows more than the DLQ topic (default broker limit): ~1.2 MB after gzip.
    t.metrics = unique_id("bigmetric")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t.metrics, 1, 1, topic_configs={"max.message.bytes": "4194304"})])
    finally:
        await admin.close()
    mr = unique_id("mr")
    noise = base64.b64encode(random.Random(7).randbytes(1_200_000)).decode()
    big = orjson.dumps({"model_run_id": mr, "metrics": [], "blob": noise})
    value, headers = await scenario(kafka_bootstrap, t, tmp_path, mr, t.metrics, big)
    assert headers.truncated
    assert headers.original_size == len(big)
    assert headers.original_sha256 == hashlib.sha256(big).hexdigest()
    assert value is not None and 0 < len(value) < 1_048_576 and big.startswith(value)

    out = io.StringIO()
    stats = await replay(Settings(kafka_bootstrap=kafka_bootstrap, topic_dlq=t.dlq), out=out)
    assert stats.total_replayed == 0 and stats.truncated == 1
    assert "truncated dead letter" in out.getvalue() and str(len(big)) in out.getvalue()


async def test_topics_create_sets_the_dlq_topics_max_message_bytes(
    kafka_bootstrap: str, unique_id: Callable[[str], str]
) -> None:
    dlq = unique_id("dlq")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env.update({"PYTHONPATH": str(ROOT), "RUNSTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap, "RUNSTREAM_TOPIC_DLQ": dlq,
                "RUNSTREAM_TOPIC_PREDICTIONS": unique_id("p"), "RUNSTREAM_TOPIC_METRICS": unique_id("m"),
                "RUNSTREAM_TOPIC_LABELS": unique_id("l"), "RUNSTREAM_DLQ_MAX_MESSAGE_BYTES": "3145728"})
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "runstream", "topics", "create", "--partitions",
                                                "1", cwd=str(ROOT), env=env)
    assert await proc.wait() == 0
    assert await topic_max_message_bytes(kafka_bootstrap, dlq, {}) == 3_145_728
    assert await topic_max_message_bytes(kafka_bootstrap, env["RUNSTREAM_TOPIC_METRICS"], {}) == 1_048_588
