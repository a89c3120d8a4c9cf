"""Prometheus metrics of runstream, registered on an explicit CollectorRegistry (no globals).

Names follow Prometheus' naming conventions: a ``runstream_`` prefix, ``_total`` counters, ``_seconds`` /
``_bytes`` units, per-partition lag as ``runstream_consumer_lag`` (highwater − committed)
and ``runstream_consumer_lag_stored`` (highwater − processed, librdkafka's application
view). To add a metric: add a field to the dataclass and create it in ``create``; label
values must never contain secrets or unbounded ids other than topic/partition.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BATCH_EVENTS_BUCKETS = (1, 5, 10, 50, 100, 500, 1000, 2000, 5000, 10000)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True)
class ConsumerMetrics:
    """Metrics of the consumer runtime and the uploader; ``group`` label = consumer group."""

    registry: CollectorRegistry
    events: Counter  # {group, topic, outcome}: outcome = delivered | dlq
    dlq_messages: Counter  # {group, error_class}
    batch_events: Histogram  # {group}
    batch_seconds: Histogram  # {group}
    in_flight_batches: Gauge  # {group}
    buffered_bytes: Gauge  # {group}
    paused: Gauge  # {group}: 1 while fetching is paused for backpressure
    rebalances: Counter  # {group}
    commits: Counter  # {group}
    consumer_lag: Gauge  # {group, topic, partition}
    consumer_lag_stored: Gauge  # {group, topic, partition}
    labelbox_requests: Counter  # {operation, status_class}
    labelbox_request_seconds: Histogram  # {operation}
    labelbox_retries: Counter  # {reason}
    labelbox_budget_wait_seconds: Counter  # time Labelbox requests waited for the process's request budget
    labelbox_rate_limit_pauses: Counter  # Retry-After pauses of every request of the process
    model_run_rejections: Counter  # {group}: verdicts "Labelbox rejects this model run" (one per period)
    rejected_model_runs: Gauge  # {group}: model runs whose messages are dead-lettered without calls now
    ready: Gauge  # {group}: 1 when assigned and working, 0 when stopped or fatal
    aggregator_commit_seconds: Histogram  # {group}: aggregator state + offsets transaction latency
    rows_superseded: Counter  # {group}: rows left out of an import because a later row has their uuid
    imports_in_flight: Gauge  # {group, state}: prediction imports being created / running in Labelbox

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> ConsumerMetrics:
        reg = registry if registry is not None else CollectorRegistry()
        g = ["group"]
        return cls(
            registry=reg,
            events=Counter("runstream_events", "Input messages by outcome.", [*g, "topic", "outcome"],
                           registry=reg),
            dlq_messages=Counter("runstream_dlq_messages", "Messages written to the DLQ.", [*g, "error_class"],
                                 registry=reg),
            batch_events=Histogram("runstream_batch_events", "Messages per flushed batch.", g,
                                   buckets=_BATCH_EVENTS_BUCKETS, registry=reg),
            batch_seconds=Histogram("runstream_batch_duration_seconds", "Batch processing time.", g,
                                    buckets=_LATENCY_BUCKETS, registry=reg),
            in_flight_batches=Gauge("runstream_in_flight_batches", "Batches being processed.", g, registry=reg),
            buffered_bytes=Gauge("runstream_buffered_bytes", "Accounted bytes held in memory.", g, registry=reg),
            paused=Gauge("runstream_fetch_paused", "1 while fetching is paused (backpressure).", g,
                         registry=reg),
            rebalances=Counter("runstream_rebalances", "Partition revocations handled.", g, registry=reg),
            commits=Counter("runstream_offset_commits", "Successful offset commits.", g, registry=reg),
            consumer_lag=Gauge("runstream_consumer_lag", "Highwater minus committed offset.",
                               [*g, "topic", "partition"], registry=reg),
            consumer_lag_stored=Gauge("runstream_consumer_lag_stored", "Highwater minus processed offset.",
                                      [*g, "topic", "partition"], registry=reg),
            labelbox_requests=Counter("runstream_labelbox_requests", "Labelbox API calls by status class.",
                                      ["operation", "status_class"], registry=reg),
            labelbox_request_seconds=Histogram("runstream_labelbox_request_duration_seconds",
                                               "Labelbox API call latency.", ["operation"],
                                               buckets=_LATENCY_BUCKETS, registry=reg),
            labelbox_retries=Counter("runstream_labelbox_retries", "Retried Labelbox calls by reason.",
                                     ["reason"], registry=reg),
            labelbox_budget_wait_seconds=Counter("runstream_labelbox_budget_wait_seconds",
                                                 "Time Labelbox requests waited for their turn in the request "
                                                 "budget.", registry=reg),
            labelbox_rate_limit_pauses=Counter("runstream_labelbox_rate_limit_pauses",
                                               "429 Retry-After pauses applied to every Labelbox request of the "
                                               "process.", registry=reg),
            model_run_rejections=Counter("runstream_labelbox_model_run_rejections",
                                         "Model runs Labelbox rejected (not found, deleted, no permission), "
                                         "once per verdict period.", g, registry=reg),
            rejected_model_runs=Gauge("runstream_labelbox_rejected_model_runs",
                                      "Model runs whose messages go to the DLQ without Labelbox calls now.", g,
                                      registry=reg),
            ready=Gauge("runstream_ready", "1 when the consumer is assigned and healthy.", g, registry=reg),
            aggregator_commit_seconds=Histogram("runstream_aggregator_commit_seconds",
                                                "Aggregator state + offsets commit latency.", g,
                                                buckets=_COMMIT_BUCKETS, registry=reg),
            rows_superseded=Counter("runstream_rows_superseded",
                                    "Prediction rows not sent because a later row of the batch has their uuid.",
                                    g, registry=reg),
            imports_in_flight=Gauge("runstream_imports_in_flight", "Prediction imports by state (creating, running).",
                                    [*g, "state"], registry=reg),
        )

    def observe_labelbox(self, operation: str, status: int | None, seconds: float) -> None:
        """Hook for LabelboxClient(on_request=...)."""
        status_class = "error" if status is None else f"{status // 100}xx"
        self.labelbox_requests.labels(operation, status_class).inc()
        self.labelbox_request_seconds.labels(operation).observe(seconds)
