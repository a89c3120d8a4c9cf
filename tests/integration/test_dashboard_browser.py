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
            # confidence-keyed, with a subclass: the page shows the value at the chosen confidence
            {"data_row": {"id": f"dr{i % 7}"}, "metric_name": "iou_conf", "feature_name": "cat",
             "subclass_name": "tall", "value": {"0.1": (i % 3) / 3, "0.5": (i % 5) / 5, "0.9": (i % 9) / 9}},
        ],
    })  # fmt: skip


def _at_confidence(entries: list[dict[str, Any]], c: float) -> dict[str, Any] | None:
    """The page's rule: the largest confidence key not above c, else the smallest key."""
    ordered = sorted(entries, key=lambda e: e["confidence"])
    if not ordered:
        return None
    below = [e for e in ordered if e["confidence"] <= c + 1e-9]
    return below[-1] if below else ordered[0]


def _displayed(doc: dict[str, Any], c: float = 0.5) -> dict[tuple[str, str, str], str]:
    """What the page should print for each row, formatted as the page formats it (a node with only
    confidence-keyed values shows its value at confidence ``c``)."""

    def fmt(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, dict):
            f = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
            return f"P {f(v['precision'])} · R {f(v['recall'])} · F1 {f(v['f1'])}"
        return f"{v:.1f}" if abs(v) >= 1000 else f"{float(f'{v:.4g}')}"

    def shown(node: dict[str, Any]) -> str:
        if node["count"] > 0:
            return fmt(node["value"])
        at = _at_confidence(node["confidence"], c)
        return fmt(at["value"] if at else None)

    out: dict[tuple[str, str, str], str] = {}
    for m in doc["metrics"]:
        out[(m["metric"], "", "")] = shown(m)
        for f in m["features"]:
            out[(m["metric"], f["feature"], "")] = shown(f)
            for sc in f["subclasses"]:
                out[(m["metric"], f["feature"], sc["subclass"])] = shown(sc)
    return out


ROWS_JS = ("els => els.map(e => [e.dataset.metric, e.dataset.feature, e.dataset.subclass,"
           " e.querySelector('td.value').textContent])")


async def _page_rows(page: Any, tbody: str) -> dict[tuple[str, str, str], str]:
    rows = await page.eval_on_selector_all(f"tbody#{tbody} tr[data-metric]", ROWS_JS)
    return {(m, f, sc): _normalize(v) for m, f, sc, v in rows}


def _norm_all(want: dict[tuple[str, str, str], str]) -> dict[tuple[str, str, str], str]:
    return {k: _normalize(v) for k, v in want.items()}


async def _until_equal(page: Any, tbody: str, want: dict[tuple[str, str, str], str], what: str) -> None:
    deadline = time.monotonic() + 15
    while (got := await _page_rows(page, tbody)) != _norm_all(want):
        assert time.monotonic() < deadline, f"{what}: page {got} != API {want}"
        await asyncio.sleep(0.3)


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
    group = unique_id("agg")
    env = agg_env(kafka_bootstrap, topics, group, str(tmp_path / "state.sqlite3"))
    proc = AggProcess(env, tmp_path, tmp_path / "log")
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
                        got = await _page_rows(page, "metrics")
                        if got == _norm_all(want):
                            break
                        assert time.monotonic() < deadline, f"page {got} != API {want}"
                        await asyncio.sleep(0.5)
                    assert ("boxes", "dog", "") in got and got[("boxes", "dog", "")].startswith("P ")
                    async with http.get(f"{proc.url}/v1/model-runs/{RUN}/metrics") as resp:
                        doc = await resp.json()

                    # Confidence-keyed values: the slider picks the confidence, the page follows.
                    (conf_metric,) = [m for m in doc["metrics"] if m["metric"] == "iou_conf"]
                    tall = conf_metric["features"][0]["subclasses"][0]
                    assert tall["count"] == 0 and tall["value"] is None and len(tall["confidence"]) == 3
                    assert got[("iou_conf", "cat", "tall")] != "–"  # a missing value renders as "–"
                    await page.eval_on_selector(
                        "#conf", "el => { el.value = '0.9'; el.dispatchEvent(new Event('input')); }"
                    )
                    await _until_equal(page, "metrics", _displayed(doc, 0.9), "confidence 0.9")
                    sel = 'tbody#metrics tr[data-metric="iou_conf"][data-feature="cat"][data-subclass="tall"]'
                    assert await page.get_attribute(sel, "data-confidence") == "0.9"
                    shown, at = (await page.inner_text(sel + " td.conf")).strip().rsplit(" @", 1)
                    assert (_normalize(shown), at) == (_normalize(f"{tall['confidence'][-1]['value']:.4g}"), "0.90")
                    assert await page.locator(sel + " td.conf svg.curve").count() == 1
                    assert await page.inner_text('[data-testid="confidence-value"]') == "0.90"

                    # A filter through the query API: accuracy at least 0.5 on the data row.
                    await page.select_option('[data-testid="filter-metric"]', "accuracy")
                    await page.fill('[data-testid="filter-min"]', "0.5")
                    await page.click('[data-testid="slice-apply"]')
                    body = {"filter": {"metric": "accuracy", "min": 0.5}}
                    async with http.post(f"{proc.url}/v1/model-runs/{RUN}/metrics/query", json=body) as resp:
                        filtered = await resp.json()
                    assert 0 < filtered["data_row_count"] < 7
                    await page.wait_for_function(
                        f"document.querySelector('[data-testid=slice-status]').dataset.count === "
                        f"'{filtered['data_row_count']}'", timeout=15_000,
                    )  # fmt: skip
                    await _until_equal(page, "slice-metrics", _displayed(filtered, 0.9), "filter")

                    # A slice by data row ids, then one data row's own view.
                    await page.fill('[data-testid="slice-rows"]', "dr1, dr2")
                    await page.click('[data-testid="slice-apply"]')
                    async with http.post(f"{proc.url}/v1/model-runs/{RUN}/metrics/query",
                                         json={"data_row_ids": ["dr1", "dr2"]}) as resp:  # fmt: skip
                        sliced = await resp.json()
                    await page.wait_for_function(
                        "document.querySelector('[data-testid=slice-status]').dataset.count === '2'", timeout=15_000
                    )
                    await _until_equal(page, "slice-metrics", _displayed(sliced, 0.9), "slice")
                    await page.fill('[data-testid="row-id"]', "dr3")
                    await page.click('[data-testid="row-show"]')
                    async with http.get(f"{proc.url}/v1/model-runs/{RUN}/data-rows/dr3/metrics") as resp:
                        one = await resp.json()
                    await _until_equal(page, "row-metrics", _displayed(one, 0.9), "data row dr3")

                    # The pipeline panel: this process's consumer group, its lag from /v1/pipeline.
                    group_row = f'tbody[data-testid="pipeline-groups"] tr[data-group="{group}"]'
                    await page.wait_for_selector(group_row, timeout=15_000)
                    async with http.get(f"{proc.url}/v1/pipeline") as resp:
                        (agg_group,) = [g for g in (await resp.json())["groups"] if g["group"] == group]
                    assert agg_group["events"] == {"applied": 90}
                    await page.wait_for_function(
                        f"document.querySelector('{group_row} td[data-testid=events]').textContent === 'applied 90'",
                        timeout=15_000,
                    )
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
