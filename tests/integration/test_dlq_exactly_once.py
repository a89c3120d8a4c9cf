"""Exactly-once dead letters: kill -9 of the uploader while valid batches wait on Labelbox and the
poison messages behind them were already rejected, then a restart: every poison message is in the
DLQ exactly once (dead letters and the offset commit that moves past them are one transaction)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from uploader_harness import (
    committed,
    event,
    local_labelbox,
    make_topics,
    prediction_row,
    produce,
    read_dlq,
    seed,
    settings_env,
    settings_for,
    wait_committed,
    wait_until,
)

from consumers.dlq.headers import DlqHeaders
from consumers.dlq.transactional import Letter, TransactionalDlq
from devstack.kafka_broker import free_port

ROOT = Path(__file__).resolve().parents[2]


async def spawn(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as fh:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "consumers.uploader", cwd=str(ROOT),
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, stdout=fh, stderr=fh,
        )  # fmt: skip


async def test_kill_9_after_rejections_before_commit_leaves_each_poison_message_once(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    t = await make_topics(new_topic, unique_id, partitions=1)  # one partition: poison behind valid messages
    mr = unique_id("mr")
    k = mr.encode()
    msgs: list[tuple[str, bytes | None, bytes | None]] = []
    poison = 0
    for i in range(4):
        msgs.append((t.predictions, k, event(mr, predictions=[prediction_row(f"dr-{i}", "cat", i)])))
        for j in range(3):
            msgs.append((t.predictions, k, b'{"model_run_id": ' if j % 2 else b"[1, 2]"))
            poison += 1
    log = tmp_path / "uploader.log"
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=[mr], data_rows=[{"id": f"dr-{i}"} for i in range(4)])
        server.add_fault({"kind": "http_error", "status": 503, "fraction": 1.0})  # valid batches never finish
        env = settings_env(settings_for(kafka_bootstrap, t, server.url, shutdown_grace_s=5))
        await produce(kafka_bootstrap, msgs)
        proc = await spawn(env, log)
        try:
            deadline = time.monotonic() + 60
            while log.read_bytes().count(b"dead-lettered") < poison:
                assert proc.returncode is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "poison never rejected\n" + log.read_text()[-3000:]
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.5)  # whatever the rejected messages lead to has had time to reach the broker
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        server.clear_faults()
        proc = await spawn(env, log)
        try:
            async def landed() -> bool:
                assert proc.returncode is None, log.read_text()[-3000:]
                return (await server.db(server.store.counts, mr))["predictions"] >= 4

            await wait_until(landed, 90, "valid predictions stored after the restart")
            await wait_committed(kafka_bootstrap, t)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0, log.read_text()[-3000:]
    letters = await read_dlq(kafka_bootstrap, t.dlq, expect=poison, timeout=20)
    per_offset = Counter((h.source_topic, h.source_partition, h.source_offset) for _, _, h in letters)
    assert len(per_offset) == poison, per_offset
    assert set(per_offset.values()) == {1}, f"dead letters written more than once: {per_offset}"


async def test_a_failing_transaction_is_an_outage_that_keeps_its_letters(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str]
) -> None:
    reasons: list[str | None] = []
    dead = TransactionalDlq(f"127.0.0.1:{free_port()}", "dlq", "g", unique_id("txn"), on_failing=reasons.append,
                            commit_timeout_s=3)  # nothing listens: the broker is "down"
    h = DlqHeaders(error_class="json", error_message="m", source_topic="src", source_partition=0, source_offset=4,
                   consumer_group="g")
    dead.add("src", 0, Letter(4, b"k", b"v", h))
    assert await dead.commit({("src", 0): 5}) is None
    assert dead.failing and reasons and reasons[-1] == dead.failing and dead.pending == 1
    await dead.stop()

    # the same letter and offsets, committed once the broker answers
    src, dlq = await new_topic(partitions=1), await new_topic(partitions=1, prefix="dlq")
    group = unique_id("g")
    live = TransactionalDlq(kafka_bootstrap, dlq, group, unique_id("txn"), on_failing=reasons.append)
    await live.start()
    try:
        live.add(src, 0, Letter(4, b"k", b"v", h.model_copy(update={"source_topic": src})))
        written = await live.commit({(src, 0): 5})
        assert written is not None and len(written) == 1 and live.pending == 0 and live.failing is None
    finally:
        await live.stop()
    (entry,) = await read_dlq(kafka_bootstrap, dlq, expect=1, timeout=10)
    assert entry[0] == b"k" and entry[1] == b"v"
    assert (await committed(kafka_bootstrap, group, [src]))[(src, 0)] == 5
