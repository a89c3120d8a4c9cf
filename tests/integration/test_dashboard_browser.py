"""The dashboard, in a real headless Chromium, shows the values the API returns while events flow."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aggregator_harness import AggProcess, agg_env
from aiokafka import AIOKafkaProducer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("RUNSTREAM_REQUIRE_BROWSER"),
    reason="Debian chromium is not installed (CI installs it and sets RUNSTREAM_REQUIRE_BROWSER)",
)

RUN = "mr-dashboard"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _metric_event(i: int) -> bytes:
    return orjson.dumps({
        "model_run_id": RUN,
        "metrics": [
            {"data_row": {"id": f"dr{i % 7}"}, "metric_name": "accuracy", "value": (i % 10) / 10},
            {"data_row": {"id": f"dr{i % 7}"}, "metric_name": "accuracy", "feature_name": "cat", "value": (i % 4) / 4},
            {"dataRow": {"id": f"dr{i % 7}"}, "metricName": "boxes", "featureName": "dog",
             "metricValue": [i % 5, 1, 2, i % 3], "aggregation": "CONFUSION_MATRIX"},
        ],
    })  # fmt: skip


def _displayed(doc: dict[str, Any]) -> dict[tuple[str, str], str]:
    """What the page should print for each row, formatted as the page formats it."""

    def fmt(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, dict):
            f = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
            return f"P {f(v['precision'])} · R {f(v['recall'])} · F1 {f(v['f1'])}"
        return f"{v:.1f}" if abs(v) >= 1000 else f"{float(f'{v:.4g}')}"

    out: dict[tuple[str, str], str] = {}
    for m in doc["metrics"]:
        out[(m["metric"], "")] = fmt(m["value"])
        for f in m["features"]:
            out[(m["metric"], f["feature"])] = fmt(f["value"])
    return out


def _normalize(text: str) -> str:
    """JS toPrecision(4) prints trailing zeros ('0.5000'); compare numbers, not spellings."""
    try:
        return str(float(text))
    except ValueError:
        return text


async def test_dashboard_matches_api_while_events_flow(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    topics = {k: await new_topic(partitions=2, prefix=k) for k in ("predictions", "metrics", "dlq")}
    proc = AggProcess(
        agg_env(kafka_bootstrap, topics, unique_id("agg"), str(tmp_path / "state.sqlite3")), tmp_path, tmp_path / "log"
    )
    proc.start()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await proc.wait_http()
        for i in range(30):
            await producer.send(topics["metrics"], _metric_event(i), key=RUN.encode())
        await producer.send(topics["dlq"], b"bad", headers=[])  # counted as 'unknown' by the DLQ view
        await producer.flush()

        async def flow() -> None:  # keep events coming while the page is open
            for i in range(30, 90):
                await producer.send(topics["metrics"], _metric_event(i), key=RUN.encode())
                await asyncio.sleep(0.05)
            await producer.flush()

        flowing = asyncio.create_task(flow())
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                await page.goto(proc.url + "/")
                await page.wait_for_selector('tr.metric[data-metric="accuracy"]', timeout=30_000)
                await flowing
                # Once the stream is drained, the page and the API must agree on every row.
                deadline = time.monotonic() + 30
                async with aiohttp.ClientSession() as http:
                    while True:
                        async with http.get(f"{proc.url}/v1/model-runs/{RUN}/metrics") as resp:
                            want = _displayed(await resp.json())
                        rows = await page.eval_on_selector_all(
                            "tr[data-metric]",
                            "els => els.map(e => [e.dataset.metric, e.dataset.feature,"
                            " e.querySelector('td.value').textContent])",
                        )
                        got = {(m, f): _normalize(v) for m, f, v in rows}
                        if got == {k: _normalize(v) for k, v in want.items()}:
                            break
                        assert time.monotonic() < deadline, f"page {got} != API {want}"
                        await asyncio.sleep(0.5)
                    assert ("boxes", "dog") in got and got[("boxes", "dog")].startswith("P ")
                    assert await page.get_attribute('[data-testid="run-select"] option', "value") == RUN
                    await page.wait_for_function(
                        "document.querySelector('[data-testid=dlq-total]').textContent === '1'", timeout=15_000
                    )
                    assert await page.inner_text('tr[data-class="unknown"]') == "unknown\t1"
            finally:
                await browser.close()
    finally:
        await producer.stop()
        assert proc.stop() == 0, proc.log.read_text()[-3000:]
