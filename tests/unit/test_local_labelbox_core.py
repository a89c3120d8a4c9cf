"""Pure parts of the local Labelbox API: fault plans, cursors, import status rows."""

from __future__ import annotations

import uuid

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from row_uuid import row_uuid as U

from devstack.local_labelbox import faults
from devstack.local_labelbox.cursors import InvalidCursorError, decode_cursor, encode_cursor, end_cursor
from devstack.local_labelbox.imports import ANNOTATION_PER_DATA_ROW_LIMIT, plan_import
from service.events import parse_ndjson_row

# ---- faults ----------------------------------------------------------------------------


def rule(spec: dict[str, object], rid: int = 1) -> faults.FaultRule:
    return faults.parse_rule(spec, rid)


def test_count_rule_fires_n_times_then_disappears() -> None:
    plan: tuple[faults.FaultRule, ...] = (rule({"kind": "http_error", "count": 2, "status": 502}),)
    fired = []
    for _ in range(3):
        eff, plan = faults.decide(plan, ["q"], 0.99)
        fired.append(eff.terminal.status if eff.terminal else None)
    assert fired == [502, 502, None] and plan == ()


def test_fraction_rule_uses_draw_and_persists() -> None:
    plan = (rule({"kind": "rate_limit", "fraction": 0.5}),)
    eff, plan2 = faults.decide(plan, [], 0.2)
    assert eff.terminal is not None and plan2 == plan
    eff, _ = faults.decide(plan, [], 0.7)
    assert eff.terminal is None


def test_operation_filter_and_latency_adds_up() -> None:
    plan = (
        rule({"kind": "latency", "count": 1, "latencyMs": 100}, 1),
        rule({"kind": "latency", "count": 1, "latencyMs": 50, "operations": ["opA"]}, 2),
        rule({"kind": "auth", "count": 1, "operations": ["opB"]}, 3),
    )
    eff, rest = faults.decide(plan, ["opA", "modelRun"], 0.0)
    assert eff.latency_ms == 150 and eff.terminal is None
    assert [r.rule_id for r in rest] == [3]
    eff, rest = faults.decide(rest, ["opB"], 0.0)
    assert eff.terminal is not None and eff.terminal.kind == "auth" and rest == ()


def test_import_failed_only_consumed_at_import_creation() -> None:
    plan = (rule({"kind": "import_failed", "count": 1}),)
    eff, same = faults.decide(plan, ["x"], 0.0)
    assert eff.is_noop and same == plan
    fail, rest = faults.take_import_failure(plan, 0.0)
    assert fail and rest == ()
    assert faults.take_import_failure(rest, 0.0) == (False, ())


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "nope", "count": 1},
        {"kind": "auth"},
        {"kind": "auth", "count": 1, "fraction": 0.5},
        {"kind": "auth", "count": 0},
        {"kind": "auth", "fraction": 1.5},
        {"kind": "http_error", "count": 1, "status": 404},
        {"kind": "auth", "count": 1, "operations": "x"},
    ],
)
def test_bad_specs_rejected(spec: dict[str, object]) -> None:
    with pytest.raises(faults.FaultSpecError):
        faults.parse_rule(spec, 1)


# ---- cursors ---------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=2**62))
def test_cursor_roundtrip(seq: int) -> None:
    assert decode_cursor(encode_cursor(seq)) == seq


def test_cursor_edges() -> None:
    assert decode_cursor(None) == 0 and decode_cursor("") == 0
    assert end_cursor([1, 2], has_more=False) is None
    assert end_cursor([1, 2], has_more=True) == encode_cursor(2)
    for bad in ["!!!", encode_cursor(1)[:-2] + "zz", "bXJkcjp4"]:
        with pytest.raises(InvalidCursorError):
            decode_cursor(bad)


# ---- import planning -------------------------------------------------------------------

BOX = {"top": 1, "left": 1, "height": 1, "width": 1}


def nd(rows: list[dict[str, object]]) -> bytes:
    return b"\n".join(orjson.dumps(r) for r in rows)


def plan(rows: list[dict[str, object]] | bytes, ids: set[str] | None = None):  # type: ignore[no-untyped-def]
    payload = rows if isinstance(rows, bytes) else nd(rows)
    return plan_import(
        payload,
        model_run_id="mr",
        import_id="imp",
        run_data_row_ids=ids if ids is not None else {"d1", "d2"},
        run_global_keys={"g1": "d1"},
        parse_row=parse_ndjson_row,
    )


def test_status_rows_success_and_failures() -> None:
    p = plan(
        [
            {"uuid": U("a"), "name": "car", "dataRow": {"id": "d1"}, "bbox": BOX},
            {"uuid": U("b"), "name": "car", "dataRow": {"globalKey": "g1"}, "bbox": BOX},
            {"uuid": U("c"), "name": "car", "dataRow": {"id": "d9"}, "bbox": BOX},
            {"uuid": U("e"), "name": "car", "dataRow": {"globalKey": "g9"}, "bbox": BOX},
            {"dataRow": {"id": "d2"}, "metricValue": [1, 2], "metricName": "cm", "aggregation": "CONFUSION_MATRIX"},
            {"dataRow": {"id": "d2"}, "metricValue": 0.5, "metricName": "m"},
        ]
        ,
    )
    s = p.statuses
    assert s[0] == {"uuid": U("a"), "dataRow": {"id": "d1"}, "status": "SUCCESS"}
    assert s[1] == {"uuid": U("b"), "dataRow": {"id": "d1"}, "status": "SUCCESS"}
    assert s[2]["status"] == "FAILURE" and s[2]["dataRow"] == {"id": "d9"}
    assert s[2]["errors"][0]["name"] == "DataRowNotInModelRun"
    assert s[3]["dataRow"] == {"globalKey": "g9"} and "g9" in s[3]["errors"][0]["message"]
    assert s[4]["errors"][0]["name"] == "ValidationError" and "metricValue" in s[4]["errors"][0]["message"]
    assert s[5]["status"] == "SUCCESS" and isinstance(s[5]["uuid"], str)
    assert p.failures == 3 and len(p.predictions) == 2 and len(p.metrics) == 1
    assert set(orjson.loads(line)["status"] for line in p.error_ndjson().split(b"\n")) == {"FAILURE"}


def test_bad_lines_and_mask_custom_metrics() -> None:
    payload = b'{"x": \n[1]\n\n' + orjson.dumps(
        {"uuid": U("m"), "name": "seg", "dataRow": {"id": "d1"}, "mask": {"png": "x"},
         "customMetrics": [{"name": "iou", "value": 0.1}]}
    )
    s = plan(payload).statuses
    assert [x["errors"][0]["name"] for x in s[:2]] == ["InvalidJson", "InvalidJson"]
    assert s[2]["status"] == "FAILURE" and "mask" in s[2]["errors"][0]["message"]


def test_annotation_limit_fails_whole_group_only() -> None:
    rows = [{"uuid": U(f"u{i}"), "name": "car", "dataRow": {"id": "d1"}, "bbox": BOX}
            for i in range(ANNOTATION_PER_DATA_ROW_LIMIT + 1)]
    rows.append({"uuid": U("other"), "name": "dog", "dataRow": {"id": "d1"}, "bbox": BOX})
    p = plan(rows)
    assert p.failures == ANNOTATION_PER_DATA_ROW_LIMIT + 1
    assert p.statuses[-1]["status"] == "SUCCESS"
    assert [pr[0] for pr in p.predictions] == [U("other")]
    assert p.statuses[0]["errors"][0]["name"] == "AnnotationLimitExceeded"


def test_exactly_at_limit_is_fine() -> None:
    rows = [{"uuid": U(f"u{i}"), "name": "car", "dataRow": {"id": "d1"}, "bbox": BOX}
            for i in range(ANNOTATION_PER_DATA_ROW_LIMIT)]
    assert plan(rows).failures == 0


def test_a_uuid_repeated_in_one_import_fails_the_repeat() -> None:
    first = {"uuid": U("x"), "name": "car", "dataRow": {"id": "d1"}, "bbox": BOX, "confidence": 0.1}
    again = {**first, "confidence": 0.9}
    metric = {"uuid": U("x"), "dataRow": {"id": "d2"}, "metricValue": 0.5, "metricName": "m"}
    p = plan([first, again, metric])
    s = p.statuses
    assert s[0] == {"uuid": U("x"), "dataRow": {"id": "d1"}, "status": "SUCCESS"}
    for repeat in s[1:]:
        assert repeat["status"] == "FAILURE" and repeat["uuid"] == U("x")
        assert repeat["errors"][0]["name"] == "DuplicateUuid" and U("x") in repeat["errors"][0]["message"]
    assert [orjson.loads(pr[3])["confidence"] for pr in p.predictions] == [0.1]  # the first row stands
    assert p.metrics == [] and p.failures == 2
    # rows without a uuid (metric rows as the SDK writes them) are never repeats
    assert plan([{k: v for k, v in metric.items() if k != "uuid"}] * 2).failures == 0


def test_a_uuid_that_is_not_a_uuid_fails() -> None:
    good = str(uuid.uuid4()).upper()
    rows = [
        {"uuid": "pred-1", "name": "car", "dataRow": {"id": "d1"}, "bbox": BOX},
        {"uuid": good[:-1], "dataRow": {"id": "d2"}, "metricValue": 0.5, "metricName": "m"},
        {"uuid": good, "name": "car", "dataRow": {"id": "d1"}, "bbox": BOX},
    ]
    s = plan(rows).statuses
    assert [x["status"] for x in s] == ["FAILURE", "FAILURE", "SUCCESS"]
    assert s[0]["errors"][0] == {"name": "InvalidUuid", "message": "uuid 'pred-1' is not a UUID"}
    assert s[1]["errors"][0]["name"] == "InvalidUuid" and s[1]["dataRow"] == {"id": "d2"}
