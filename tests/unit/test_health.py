from __future__ import annotations

import time
from pathlib import Path

from consumers.aggregator import Aggregator, AggregatorProbe
from consumers.runtime import RuntimeStatus
from service.config import Settings
from service.health import Probe, liveness, readiness
from service.state import SqlStateBackend


def _probe(name: str, progress: float, reason: str | None) -> Probe:
    return Probe(name, lambda: progress, lambda: reason)


def test_liveness_fails_only_for_a_stalled_loop() -> None:
    probes = [_probe("uploader", 100.0, None), _probe("aggregator", 50.0, None)]
    v = liveness(probes, now=110.0, stall_after_s=30.0)
    assert not v.ok
    assert v.checks == {"uploader": "ok", "aggregator": "no loop progress for 60 s"}
    assert liveness(probes, now=70.0, stall_after_s=30.0).ok


def test_readiness_reports_each_reason() -> None:
    v = readiness([_probe("uploader", 0, None), _probe("aggregator", 0, "recovering state")])
    assert not v.ok
    assert v.as_json() == {"status": "fail", "checks": {"uploader": "ok", "aggregator": "recovering state"}}
    assert readiness([_probe("uploader", 0, None)]).ok


def test_nothing_running_is_not_ready() -> None:
    assert not readiness([]).ok


def test_uploader_member_with_an_empty_assignment_is_ready() -> None:
    status = RuntimeStatus(started=True)
    probe = status.probe("uploader")
    assert readiness([probe]).checks == {"uploader": "not joined the consumer group yet"}
    status.joined = True  # more replicas than partitions: this one is a standby
    assert status.assigned == () and status.ready and readiness([probe]).ok
    status.rebalancing = True
    assert readiness([probe]).checks == {"uploader": "rebalancing"}
    status.rebalancing, status.outage = False, "DLQ writes failing (retrying): broker down"
    assert not status.ready and readiness([probe]).checks["uploader"].startswith("DLQ writes failing")


def test_uploader_member_reasons_before_start_and_after_fatal() -> None:
    status = RuntimeStatus()
    assert status.not_ready_reason() == "not started"
    status.started, status.joined, status.fatal = True, True, "Labelbox rejected the API key"
    assert status.not_ready_reason() == "Labelbox rejected the API key"


def test_aggregator_probe_before_and_after_the_aggregator_exists(tmp_path: Path) -> None:
    probe = AggregatorProbe().probe()
    assert probe.name == "aggregator"
    assert readiness([probe]).checks == {"aggregator": "not started"}
    assert liveness([probe], now=time.monotonic(), stall_after_s=30).ok  # not begun is not stalled

    holder = AggregatorProbe()
    backend = SqlStateBackend.sqlite(tmp_path / "state.sqlite3")
    try:
        agg = Aggregator(Settings(kafka_bootstrap="127.0.0.1:9"), backend)
        holder.attach(agg)
        assert readiness([holder.probe()]).checks == {"aggregator": "recovering state"}  # until assigned
        agg.stats.recovering = False
        assert readiness([holder.probe()]).checks == {"aggregator": "not connected"}
    finally:
        backend.close()
