"""``runstream dlq replay``: once the cause is fixed, replayed messages land; filters hold."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from uploader_harness import (
    event,
    local_labelbox,
    make_topics,
    prediction_row,
    produce,
    read_dlq,
    running_uploader,
    seed,
    settings_env,
    settings_for,
    wait_committed,
    wait_until,
)

from consumers.dlq.replay import replay

ROOT = Path(__file__).resolve().parents[2]


async def test_replay_after_fix_delivers_and_filters_by_class(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    t = await make_topics(new_topic, unique_id, partitions=1)
    mr = unique_id("mr")
    late_row = event(mr, predictions=[prediction_row("dr-late", "cat", 7)])
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=[mr], data_rows=[{"id": "dr-0"}])
        await produce(kafka_bootstrap, [
            (t.predictions, mr.encode(), event(mr, predictions=[prediction_row("dr-0", "cat", 1)])),
            (t.predictions, mr.encode(), late_row),  # data row not yet in Labelbox → row_failed
            (t.predictions, mr.encode(), b"{broken"),  # json
        ])
        settings = settings_for(kafka_bootstrap, t, server.url)
        async with running_uploader(settings):
            await wait_committed(kafka_bootstrap, t)
        dlq = await read_dlq(kafka_bootstrap, t.dlq, expect=2)
        assert sorted(h.error_class for _, _, h in dlq) == ["json", "labelbox.row_failed"]

        # dry run through the real CLI: lists, sends nothing
        env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runstream", "dlq", "replay", "--error-class", "labelbox.row_failed", "--dry-run",
            env=env, cwd=str(ROOT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert "would replay 1 of 2 scanned (labelbox.row_failed=1)" in out.decode()

        await server.db(server.store.seed_data_rows, [{"id": "dr-late"}])  # the fix
        buf = io.StringIO()
        stats = await replay(settings, error_classes={"labelbox.row_failed"}, out=buf)
        assert stats.total_replayed == 1 and stats.skipped == 1 and stats.scanned == 2
        assert "dr-late" not in buf.getvalue() or "replay" in buf.getvalue()
        async with running_uploader(settings):
            async def landed() -> bool:
                return (await server.db(server.store.counts, mr))["predictions"] == 2

            await wait_until(landed, 60, "replayed row stored")
            await wait_committed(kafka_bootstrap, t)
        assert len(await read_dlq(kafka_bootstrap, t.dlq, expect=2, timeout=3)) == 2  # nothing new failed

        limited = await replay(settings, limit=1, dry_run=True)
        assert limited.total_replayed == 1
