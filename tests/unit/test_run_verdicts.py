from __future__ import annotations

import pytest

from service.labelbox.run_verdicts import ERROR_CLASS, RunVerdicts, dlq_message, run_of_message


def test_verdict_holds_until_its_ttl_then_one_probe_decides() -> None:
    v = RunVerdicts(60.0)
    assert v.get("mr", 0.0) is None
    got = v.reject("mr", "Resource 'ModelRun' not found", 10.0)
    assert (got.since, got.until, got.periods) == (10.0, 70.0, 1)
    assert v.get("mr", 69.9) == got
    assert v.count(69.9) == 1 and v.active(69.9) == [got]
    assert v.get("other", 20.0) is None
    # expired: forgotten, the next batch probes
    assert v.get("mr", 70.0) is None
    assert v.get("mr", 70.1) is None
    assert v.count(70.0) == 0
    renewed = v.reject("mr", "still not found", 71.0)
    assert (renewed.until, renewed.periods) == (131.0, 2)
    # a successful probe forgets it; the next rejection is a first period again
    assert v.accepted("mr") is True
    assert v.accepted("mr") is False
    assert v.get("mr", 72.0) is None
    assert v.reject("mr", "x", 200.0).periods == 1


def test_verdicts_are_bounded() -> None:
    v = RunVerdicts(10.0, max_runs=3)
    for i in range(5):
        v.reject(f"mr-{i}", "x", float(i))
    assert [x.model_run_id for x in v.active(5.0)] == ["mr-2", "mr-3", "mr-4"]


def test_zero_ttl_remembers_nothing_and_negative_is_refused() -> None:
    v = RunVerdicts(0.0)
    v.reject("mr", "x", 1.0)
    assert v.get("mr", 1.0) is None
    with pytest.raises(ValueError, match="ttl_s"):
        RunVerdicts(-1)


def test_dlq_message_names_the_run_and_keeps_labelboxs_text() -> None:
    text = "Resource 'ModelRun' not found for params: {'id': 'mr-1'}"
    msg = dlq_message("mr-1", text)
    assert text in msg and "mr-1" in msg
    assert run_of_message(msg) == "mr-1"
    assert run_of_message(dlq_message("a'b: c", text)) == "a'b: c"
    assert run_of_message("Labelbox rejected the message: x") is None
    assert run_of_message("Labelbox rejected model run ") is None
    assert ERROR_CLASS == "labelbox.model_run"


def test_dlq_stats_list_rejected_runs_for_the_dashboard() -> None:
    from consumers.dlq.headers import DlqHeaders
    from consumers.dlq.monitor import DlqStats

    def headers(cls: str, msg: str, off: int) -> list[tuple[str, bytes | None]]:
        h = DlqHeaders(error_class=cls, error_message=msg, source_topic="t", source_partition=0,
                       source_offset=off, consumer_group="g")
        return list(h.to_kafka())

    stats = DlqStats()
    text = "Resource 'ModelRun' not found for params: {'id': 'mr-typo'}"
    for i in range(3):
        stats.add(0, i, headers(ERROR_CLASS, dlq_message("mr-typo", text), i))
    stats.add(0, 3, headers("labelbox.rejected", "Labelbox rejected the message: x", 3))
    stats.add(0, 4, headers(ERROR_CLASS, dlq_message("mr-gone", "Model run mr-gone has been deleted"), 4))
    runs = stats.snapshot()["rejected_model_runs"]
    assert isinstance(runs, list)
    assert [(r["model_run_id"], r["messages"]) for r in runs] == [("mr-gone", 1), ("mr-typo", 3)]
    assert text in runs[1]["reason"]
