from __future__ import annotations

from service.health import Probe, liveness, readiness


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
