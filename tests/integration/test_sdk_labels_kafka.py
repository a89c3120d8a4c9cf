"""Labelbox SDK objects through the whole aggregation path: ``RunstreamProducer.emit_labels`` on the real
broker, a real aggregator process, the query API. The guide's SUM example must read cat 3, dog 4,
data row 7 — Labelbox's own numbers for it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aggregator_harness import AggProcess, agg_env, wait_caught_up
from labelbox.data.annotation_types import (
    ClassificationAnnotation,
    ClassificationAnswer,
    ConfusionMatrixMetric,
    Label,
    ObjectAnnotation,
    Point,
    Radio,
    Rectangle,
    ScalarMetric,
    ScalarMetricAggregation,
)
from labelbox.data.mixins import CustomMetric

from service.config import Settings
from service.producer import RunstreamProducer


@pytest.fixture
def agg_procs() -> Iterator[list[AggProcess]]:
    procs: list[AggProcess] = []
    yield procs
    for p in procs:
        p.stop()


def guide_labels() -> list[Label]:
    """The Python-class examples of Labelbox's custom-metrics guide, as a user pastes them."""
    return [
        Label(
            data={"global_key": "img-1"},
            annotations=[
                ScalarMetric(metric_name="true_positives", feature_name="cat", value=3,
                             aggregation=ScalarMetricAggregation.SUM),
                ScalarMetric(metric_name="true_positives", feature_name="dog", value=4,
                             aggregation=ScalarMetricAggregation.SUM),
                ScalarMetric(metric_name="iou_custom", value=0.5),
                ScalarMetric(metric_name="iou_feature", feature_name="cat", value=0.5),
                ScalarMetric(metric_name="iou_nested", feature_name="cat", subclass_name="orange", value=0.5),
                ScalarMetric(metric_name="iou_conf", feature_name="cat", value={0.1: 0.2, 0.3: 0.5, 0.5: 0.7}),
                ConfusionMatrixMetric(metric_name="50pct_iou", feature_name="cat", subclass_name="orange",
                                      value=(0, 1, 2, 3)),
                ObjectAnnotation(name="cat", value=Rectangle(start=Point(x=1, y=2), end=Point(x=5, y=6)),
                                 custom_metrics=[CustomMetric(name="iou", value=0.5)]),
                ClassificationAnnotation(name="weather", value=Radio(answer=ClassificationAnswer(
                    name="sunny", custom_metrics=[CustomMetric(name="agreement", value=0.7)]))),
            ],
        ),
    ]  # fmt: skip


def by_metric(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["metric"]: m for m in body["metrics"]}


def feature(tree: dict[str, Any], name: str) -> dict[str, Any]:
    (f,) = [f for f in tree["features"] if f["feature"] == name]
    return f


async def test_guide_examples_aggregate_like_labelbox(
    kafka_bootstrap: str,
    new_topic: Callable[..., Awaitable[str]],
    unique_id: Callable[[str], str],
    tmp_path: Path,
    agg_procs: list[AggProcess],
) -> None:
    topics = {
        "predictions": await new_topic(partitions=3, prefix="pred"),
        "metrics": await new_topic(partitions=3, prefix="met"),
        "dlq": await new_topic(partitions=1, prefix="dlq"),
    }
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap,
        topic_predictions=topics["predictions"],
        topic_metrics=topics["metrics"],
        topic_dlq=topics["dlq"],
    )
    run = unique_id("mr")
    async with RunstreamProducer(settings) as producer:
        assert await producer.emit_labels(run, guide_labels()) == 2  # one prediction, one metric event

    group, store = unique_id("agg"), str(tmp_path / "state.sqlite3")
    agg = AggProcess(agg_env(kafka_bootstrap, topics, group, store), tmp_path, tmp_path / "agg.log")
    agg_procs.append(agg)
    agg.start()
    await agg.wait_http()
    await wait_caught_up(kafka_bootstrap, [topics["predictions"], topics["metrics"]], group, store)

    async with aiohttp.ClientSession() as s:
        async with s.get(f"{agg.url}/v1/model-runs/{run}/metrics") as r:
            assert r.status == 200, await r.text()
            run_level = by_metric(await r.json())
        async with s.get(f"{agg.url}/v1/model-runs/{run}/data-rows/gk:img-1/metrics") as r:
            assert r.status == 200, await r.text()
            row_level = by_metric(await r.json())

    for tree in (run_level, row_level):
        tp = tree["true_positives"]
        assert tp["aggregation"] == "SUM"
        assert (feature(tp, "cat")["value"], feature(tp, "dog")["value"], tp["value"]) == (3, 4, 7)
        assert tree["iou_custom"]["value"] == 0.5
        assert feature(tree["iou_feature"], "cat")["value"] == 0.5
        nested = feature(tree["iou_nested"], "cat")["subclasses"]
        assert [(sc["subclass"], sc["value"]) for sc in nested] == [("orange", 0.5)]
        conf = {c["confidence"]: c["value"] for c in feature(tree["iou_conf"], "cat")["confidence"]}
        assert conf == {0.1: 0.2, 0.3: 0.5, 0.5: 0.7}
        (cm,) = feature(tree["50pct_iou"], "cat")["subclasses"]
        assert (cm["value"]["tp"], cm["value"]["fp"], cm["value"]["tn"], cm["value"]["fn"]) == (0, 1, 2, 3)
        assert feature(tree["iou"], "cat")["value"] == 0.5  # the bbox's customMetrics
        weather = feature(tree["agreement"], "weather")
        assert [(sc["subclass"], sc["value"]) for sc in weather["subclasses"]] == [("sunny", 0.7)]
