"""Backfill reading and validation (pure): gzip by magic, file:line reports, grouping into valid events."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.backfill import BackfillStats, BadLine, OutEvent, RateLimiter, open_input, plan_events
from service.events import MetricEvent, PredictionEvent, parse_event

MR = "mr-1"


def pred(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "dataRow": {"globalKey": f"img-{i}"},
        "name": "cat",
        "bbox": {"top": 1, "left": 2, "height": 3, "width": 4},
        "customMetrics": [{"name": "iou", "value": 0.5}],
        **extra,
    }


def metric(i: int, **extra: Any) -> dict[str, Any]:
    return {"dataRow": {"id": f"dr-{i}"}, "metricValue": 0.25, "metricName": "acc", **extra}


def lines(*objs: Any) -> list[bytes]:
    return [o if isinstance(o, bytes) else orjson.dumps(o) + b"\n" for o in objs]


def plan(ls: list[bytes], **kw: Any) -> tuple[list[OutEvent], list[BadLine], BackfillStats]:
    stats = BackfillStats()
    kw.setdefault("model_run", MR)
    items = list(plan_events("f.ndjson", ls, stats=stats, **kw))
    return (
        [i for i in items if isinstance(i, OutEvent)],
        [i for i in items if isinstance(i, BadLine)],
        stats,
    )


def test_gzip_is_detected_by_magic_bytes_not_extension(tmp_path: Path) -> None:
    body = b"".join(lines(pred(1), metric(2)))
    disguised = tmp_path / "rows.ndjson"
    disguised.write_bytes(gzip.compress(body))
    plain_named_gz = tmp_path / "rows.ndjson.gz"
    plain_named_gz.write_bytes(body)
    for path in (disguised, plain_named_gz):
        reader, raw = open_input(path)
        try:
            assert b"".join(reader) == body
        finally:
            raw.close()


def test_bad_lines_are_reported_with_line_numbers_and_fields() -> None:
    ls = lines(
        pred(1),
        pred(2, dataRow={"id": "x", "globalKey": "y"}),
        b"\n",
        metric(3, metricName="IoU"),
        b"{not json\n",
        b"[1, 2]\n",
        {"model_run_id": "mr-2", "metrics": [{"data_row": {"id": "d"}, "metric_name": "m", "value": "high"}]},
        {"model_run_id": "mr-2", "something": 1},
        metric(4, metricValue=[1, 2, 3]),
    )
    events, bad, stats = plan(ls)
    assert [(b.line, b.field, b.error_class) for b in bad] == [
        (2, "dataRow", "schema"),
        (4, "metricName", "schema"),
        (5, "", "json"),
        (6, "", "json"),
        (7, "metrics[0].value", "schema"),
        (8, "predictions", "schema"),
        (9, "metricValue", "schema"),
    ]
    assert "both" in bad[0].reason and "reserved" in bad[1].reason
    assert str(bad[0]).startswith("f.ndjson:2: dataRow: ")
    assert stats.lines_read == 9 and stats.bad_lines == 7 and stats.rows == 1
    assert [(e.kind, e.rows, e.line) for e in events] == [("prediction", 1, 1)]


def test_rows_need_a_model_run() -> None:
    events, bad, _ = plan(lines(pred(1), {"model_run_id": "mr-9", "label_ids": ["l1"]}), model_run=None)
    assert [(b.line, b.field) for b in bad] == [(1, "model_run_id")]
    assert [(e.kind, e.model_run_id) for e in events] == [("label", "mr-9")]


def test_rows_are_grouped_per_kind_up_to_max_rows_and_are_valid_events() -> None:
    ls = lines(*[pred(i) if i % 3 else metric(i) for i in range(25)])
    events, bad, stats = plan(ls, max_rows=4)
    assert not bad
    assert stats.rows == 25
    assert all(e.rows <= 4 for e in events)
    preds = [e for e in events if e.kind == "prediction"]
    mets = [e for e in events if e.kind == "metric"]
    assert sum(e.rows for e in preds) == 16 and sum(e.rows for e in mets) == 9
    seen: list[str] = []
    for e in preds:
        ev = parse_event("prediction", e.value, max_bytes=1 << 20)
        assert isinstance(ev, PredictionEvent) and ev.model_run_id == MR
        seen += [r.data_row.global_key or "" for r in ev.predictions]
    assert seen == [f"img-{i}" for i in range(25) if i % 3]  # order within a kind is kept
    for e in mets:
        assert isinstance(parse_event("metric", e.value, max_bytes=1 << 20), MetricEvent)


def test_event_lines_pass_through_unchanged_and_cut_row_groups() -> None:
    label = orjson.dumps({"modelRunId": "mr-2", "globalKeys": ["a"]})
    ls = lines(pred(1), pred(2), label + b"\r\n", pred(3))
    events, bad, _ = plan(ls)
    assert not bad
    assert [(e.kind, e.model_run_id, e.rows, e.line) for e in events] == [
        ("prediction", MR, 2, 1),
        ("label", "mr-2", 0, 3),
        ("prediction", MR, 1, 4),
    ]
    assert events[1].value == label


def test_groups_respect_the_byte_limit_and_oversized_rows_are_bad() -> None:
    big = pred(1, name="x" * 3000)
    ls = lines(*[pred(i, name="y" * 1000) for i in range(10)], big)
    events, bad, _ = plan(ls, max_bytes=2600)
    assert [(b.line, b.error_class) for b in bad] == [(11, "too_large")]
    assert all(len(e.value) <= 2600 for e in events)
    assert sum(e.rows for e in events) == 10
    for e in events:
        parse_event("prediction", e.value, max_bytes=2600)


def test_too_large_event_line_is_bad() -> None:
    line = orjson.dumps({"model_run_id": "m", "predictions": [pred(i) for i in range(50)]})
    _, bad, _ = plan([line], max_bytes=1000)
    assert [(b.field, b.error_class) for b in bad] == [("value", "too_large")]


def test_rate_limiter_spaces_events() -> None:
    limiter = RateLimiter(10)
    waits = [limiter.delay(100.0) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert limiter.delay(100.45) == pytest.approx(0.05)
    # after a long idle period there is no burst of catch-up
    assert limiter.delay(200.0) == 0.0
    assert limiter.delay(200.0) == pytest.approx(0.1)


row_strategy = st.one_of(
    st.builds(pred, st.integers(0, 50)),
    st.builds(metric, st.integers(0, 50)),
    st.builds(lambda i: metric(i, metricValue=float("nan")), st.integers(0, 5)),
    st.just(b"garbage\n"),
)


@given(st.lists(row_strategy, max_size=40), st.integers(1, 7))
@settings(max_examples=60, deadline=None)
def test_every_good_row_lands_in_exactly_one_valid_event(objs: list[Any], max_rows: int) -> None:
    ls = [o if isinstance(o, bytes) else orjson.dumps(o) + b"\n" for o in objs]  # NaN dumps as null: bad
    events, bad, stats = plan(ls, max_rows=max_rows)
    assert stats.bad_lines == len(bad)
    assert sum(e.rows for e in events) + len(bad) == len(ls)
    for e in events:
        ev = parse_event(e.kind, e.value, max_bytes=1 << 20)
        assert e.rows == len(ev.predictions if isinstance(ev, PredictionEvent) else ev.metrics)  # type: ignore[union-attr]
        assert e.rows <= max_rows


def test_blocks_keep_line_numbers_exact(tmp_path: Path) -> None:
    import io

    from service.backfill import _blocks, plan_block

    body = b"".join(lines(*[pred(i) for i in range(300)])) + b"{bad\n" + orjson.dumps(metric(1))  # no final newline
    blocks = list(_blocks(io.BytesIO(body), size=1000))
    assert len(blocks) > 5
    assert b"".join(b for b, _ in blocks) == body
    items: list[Any] = []
    total_lines = 0
    for block, before in blocks:
        got, n_lines, _, _ = plan_block("f", block, before + 1, MR, 500, 1 << 20)
        items += got
        total_lines += n_lines
    assert total_lines == 302
    bad = [i for i in items if isinstance(i, BadLine)]
    assert [(b.line, b.error_class) for b in bad] == [(301, "json")]
    events = [i for i in items if isinstance(i, OutEvent)]
    assert sum(e.rows for e in events) == 301
    assert [e.line for e in events if e.kind == "metric"] == [302]


def test_event_kind_is_right_even_when_values_look_like_other_kinds() -> None:
    tricky_pred = {"model_run_id": "m", "predictions": [pred(1, customMetrics=[{"name": "metrics", "value": 1}])]}
    tricky_metric = {
        "modelRunId": "m",
        "metrics": [{"data_row": {"id": "d"}, "metric_name": "predictions", "value": 1}],
    }
    tricky_label = {"model_run_id": "m", "global_keys": ['"metrics"', "prediction"]}
    events, bad, _ = plan(lines(tricky_pred, tricky_metric, tricky_label))
    assert not bad
    assert [e.kind for e in events] == ["prediction", "metric", "label"]
    # a row whose text mentions model_run_id is still a row
    row = pred(2, name='"model_run_id"')
    events, bad, _ = plan(lines(row))
    assert not bad and [(e.kind, e.model_run_id) for e in events] == [("prediction", MR)]
