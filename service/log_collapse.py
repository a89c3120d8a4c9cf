"""Quiet outages: repeated Kafka client errors collapsed into a few lines.

While a broker is down aiokafka logs every reconnect attempt ("Unable connect to node",
"Group Coordinator Request failed", "Unable to update metadata", ...), about 100 lines a second
per process; that buries the one line that matters. ``RepeatCollapser`` is a logging filter on
the root handler: for each repeated message (logger + message template, so the changing
arguments do not make it new) it lets the first occurrence through, then writes one summary
with the count every ``summary_every_s``, and a "recovered after X s" line once the message has
not been seen for ``quiet_s``. While any collapsed message is active, ``outage_reason()`` says so
(readiness) and ``collector()`` exports it to Prometheus.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

DEFAULT_PREFIXES = ("aiokafka", "runstream.kafka")
OUTAGE_LOGGER = "runstream.outage"


@dataclass
class _Repeat:
    first_seen: float
    last_seen: float
    last_summary: float
    example: str
    logger: str
    pending: int = 0  # suppressed since the last summary
    total: int = 1


class RepeatCollapser(logging.Filter):
    """A logging filter collapsing repeated WARNING+ records of the given logger prefixes."""

    def __init__(
        self,
        prefixes: tuple[str, ...] = DEFAULT_PREFIXES,
        *,
        summary_every_s: float = 10.0,
        quiet_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        out_logger: str = OUTAGE_LOGGER,
    ) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.summary_every_s = summary_every_s
        self.quiet_s = quiet_s
        self._clock = clock
        self._lock = threading.Lock()
        self._active: dict[tuple[str, str], _Repeat] = {}
        self.suppressed_total = 0
        self._out = logging.getLogger(out_logger)
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ the filter

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self.prefixes):
            return True
        key = (record.name, record.msg if isinstance(record.msg, str) else repr(record.msg)[:200])
        now = self._clock()
        with self._lock:
            rep = self._active.get(key)
            if rep is None:
                self._active[key] = _Repeat(now, now, now, record.getMessage()[:500], record.name)
                return True
            rep.last_seen = now
            rep.pending += 1
            rep.total += 1
            rep.example = record.getMessage()[:500]
            self.suppressed_total += 1
        return False

    # ------------------------------------------------------------------ summaries

    def tick(self) -> None:
        """Write due summaries and recoveries; called every second by the ticker thread (or by tests)."""
        now = self._clock()
        lines: list[tuple[str, tuple[object, ...]]] = []
        with self._lock:
            for key, rep in list(self._active.items()):
                if now - rep.last_seen >= self.quiet_s:
                    del self._active[key]
                    lines.append(("recovered after %.1f s: %d occurrence(s) of [%s] %s",
                                  (rep.last_seen - rep.first_seen, rep.total, rep.logger, rep.example)))
                elif rep.pending and now - rep.last_summary >= self.summary_every_s:
                    lines.append(("repeated %d more time(s) in the last %.0f s (ongoing for %.0f s): [%s] %s",
                                  (rep.pending, now - rep.last_summary, now - rep.first_seen, rep.logger,
                                   rep.example)))
                    rep.pending = 0
                    rep.last_summary = now
        for msg, args in lines:
            self._out.warning(msg, *args)

    def start(self) -> RepeatCollapser:
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._run, name="log-collapse", daemon=True)
            self._ticker.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.tick()
            except Exception:  # a summary must never kill the ticker
                logging.getLogger(OUTAGE_LOGGER).exception("log collapse tick failed")

    # ------------------------------------------------------------------ state

    def outage_seconds(self) -> float | None:
        """How long some collapsed error has been repeating (None: nothing is)."""
        with self._lock:
            if not self._active:
                return None
            return self._clock() - min(r.first_seen for r in self._active.values())

    def outage_reason(self) -> str | None:
        """For readiness: None when no client error is repeating, else what and for how long."""
        with self._lock:
            if not self._active:
                return None
            latest = max(self._active.values(), key=lambda r: r.last_seen)
            since = self._clock() - min(r.first_seen for r in self._active.values())
        return f"Kafka client errors for {since:.0f} s: {latest.example[:200]}"

    def collector(self) -> Collector:
        return _OutageCollector(self)


class _OutageCollector(Collector):
    def __init__(self, c: RepeatCollapser) -> None:
        self._c = c

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        seconds = self._c.outage_seconds()
        yield GaugeMetricFamily("runstream_kafka_outage", "1 while Kafka client errors keep repeating",
                                value=0 if seconds is None else 1)
        yield GaugeMetricFamily("runstream_kafka_outage_seconds", "how long they have been repeating",
                                value=seconds or 0.0)
        yield CounterMetricFamily("runstream_log_lines_collapsed", "repeated log lines folded into summaries",
                                  value=self._c.suppressed_total)
