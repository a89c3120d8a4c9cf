"""RepeatCollapser: first occurrence through, then one summary per interval with the count, then
"recovered after X s"; other loggers and lower levels untouched; the outage state follows."""

from __future__ import annotations

import io
import logging

from prometheus_client import CollectorRegistry, generate_latest

from service.log_collapse import RepeatCollapser


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def setup() -> tuple[RepeatCollapser, Clock, io.StringIO, logging.Logger]:
    clock = Clock()
    # Loggers of this test only: the real "aiokafka" logger is left alone for other tests.
    c = RepeatCollapser(("t13.kafka",), summary_every_s=10, quiet_s=5, clock=clock, out_logger="t13.outage")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(c)
    for name in ("t13.kafka", "t13.outage", "t13.other"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.propagate = False
        lg.setLevel(logging.INFO)
    return c, clock, out, logging.getLogger("t13.kafka")


def test_storm_collapses_to_first_line_summaries_and_recovery() -> None:
    c, clock, out, log = setup()
    assert c.outage_reason() is None
    for i in range(2000):  # 100 lines/s for 20 s
        clock.t += 0.01
        log.error("Unable connect to node with id %s: %s", 1, f"attempt {i}")
        if i % 100 == 0:
            c.tick()
    assert c.outage_reason() is not None and "Unable connect" in str(c.outage_reason())
    lines = out.getvalue().splitlines()
    assert lines[0] == "Unable connect to node with id 1: attempt 0"
    summaries = [x for x in lines if x.startswith("repeated")]
    assert len(lines) == 1 + len(summaries) and 1 <= len(summaries) <= 2, lines
    assert "more time(s)" in summaries[0] and "Unable connect to node" in summaries[0]
    clock.t += 6
    c.tick()
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("recovered after 2") and "2000 occurrence(s)" in last, last
    assert c.outage_reason() is None and c.suppressed_total == 1999


def test_other_loggers_and_info_lines_pass_untouched() -> None:
    c, _, out, log = setup()
    other = logging.getLogger("t13.other")
    for _ in range(3):
        other.warning("dead-lettered")
        log.info("Joined group")
    assert out.getvalue().count("dead-lettered") == 3 and out.getvalue().count("Joined group") == 3
    assert c.outage_reason() is None


def test_metrics_carry_the_outage() -> None:
    c, _, _, log = setup()
    reg = CollectorRegistry()
    reg.register(c.collector())
    assert b"runstream_kafka_outage 0.0" in generate_latest(reg)
    log.error("Group Coordinator Request failed: %s", "x")
    log.error("Group Coordinator Request failed: %s", "y")
    text = generate_latest(reg)
    assert b"runstream_kafka_outage 1.0" in text and b"runstream_log_lines_collapsed_total 1.0" in text
