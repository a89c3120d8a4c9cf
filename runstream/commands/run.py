"""``runstream run [--role uploader|aggregator|all]``: the long-running service.

The aggregator role also serves the query API (build_query_app) on http_host:http_port,
reading the state store through its own connection. SIGTERM/SIGINT set one stop event
that every role watches, so shutdown is orderly (final commit, leave the group, exit 0).

Shutdown is bounded whether the broker answers or not: the roles get
``RUNSTREAM_SHUTDOWN_GRACE_S`` + ``SHUTDOWN_SLACK_S`` to finish, commit and leave; a role still
running then is cancelled (and what it abandons is logged), and a watchdog thread ends the
process if even that does not finish (a thread blocked in I/O cannot be cancelled).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from typing import Any, cast

from aiohttp import web
from prometheus_client import CollectorRegistry

from consumers.aggregator import AggregatorProbe, run_aggregator
from consumers.dlq.monitor import DlqMonitor
from consumers.runtime import RuntimeStatus
from consumers.shutdown import bounded
from consumers.uploader import run_uploader
from runstream.commands import NO_BROKER_HINT
from service.api.metric_history import MetricHistory, run_level_values
from service.api.ops import add_ops_routes
from service.api.query_api import build_query_app, run_metrics_document
from service.config import Settings
from service.errors import RunstreamError
from service.gc_tuning import tune_gc
from service.health import Probe
from service.kafka import KafkaEndpoint, KafkaStartAborted
from service.log_collapse import RepeatCollapser
from service.logging_setup import configure_logging
from service.prometheus import ConsumerMetrics
from service.state import StateBackend, open_backend

log = logging.getLogger("runstream.run")
ROLES = ("uploader", "aggregator", "all")
# After the grace period: the final commits and leaving the group, each bounded in the roles.
SHUTDOWN_SLACK_S = 4.0
# After the roles were cancelled: the last resort.
WATCHDOG_EXTRA_S = 4.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the uploader and/or the aggregator (with the query API)")
    p.add_argument("--role", choices=ROLES, default="all", help="which consumer(s) to run (default %(default)s)")
    p.add_argument("--no-http", action="store_true", help="do not start the HTTP API")
    # SIGTERM before the event loop handles it is a clean stop (runstream/startup.py)
    p.set_defaults(func=_run, stops_on_sigterm=True)


def _run(args: argparse.Namespace) -> int:
    settings = Settings()
    KafkaEndpoint.from_settings(settings, hint=NO_BROKER_HINT)  # unset: a clear error before anything starts
    collapser = configure_logging(settings)
    tune_gc()
    asyncio.run(run_service(settings, args.role, http=not args.no_http, outage=collapser, watchdog=True))
    return 0


def _watchdog(limit_s: float) -> None:
    """Last resort after a stop request: end the process if the orderly path is stuck."""
    def run() -> None:
        time.sleep(limit_s)
        log.error("shutdown did not finish within %.0f s of the stop request; exiting now", limit_s)
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=run, name="shutdown-watchdog", daemon=True).start()


async def run_service(
    settings: Settings,
    role: str,
    *,
    http: bool = True,
    outage: RepeatCollapser | None = None,
    watchdog: bool = False,
) -> None:
    """Run the chosen role(s) until SIGTERM/SIGINT; the first role to fail stops the others.

    Every process serves /healthz, /readyz and /metrics (probes and scraping need them per
    pod); processes with the aggregator role also serve the query API, dashboard and DLQ view.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    registry = CollectorRegistry()
    metrics = ConsumerMetrics.create(registry)  # one set of families, shared by both roles
    probes: list[Probe] = []
    if outage is not None:
        registry.register(outage.collector())
        probes.append(Probe("kafka", time.monotonic, outage.outage_reason))
    tasks: list[asyncio.Task[Any]] = []
    background: list[asyncio.Task[Any]] = []
    runner: web.AppRunner | None = None
    api_backend = None
    monitor: DlqMonitor | None = None
    if role in ("uploader", "all"):
        status = RuntimeStatus()
        probes.append(status.probe("uploader"))
        tasks.append(
            asyncio.create_task(run_uploader(settings, stop, metrics=metrics, status=status), name="uploader")
        )
    if role in ("aggregator", "all"):
        aggregator = AggregatorProbe()
        probes.append(aggregator.probe())
        tasks.append(
            asyncio.create_task(
                run_aggregator(settings, stop, on_ready=aggregator.attach, metrics=metrics), name="aggregator"
            )
        )
    if http:
        if role in ("aggregator", "all"):
            api_backend = open_backend(settings, queries=True)
            app = build_query_app(api_backend, settings)
            monitor = DlqMonitor(settings)
            history = MetricHistory()
            background.append(asyncio.create_task(_start_monitor(monitor), name="dlq-monitor"))
            background.append(asyncio.create_task(_sample_history(api_backend, history, stop), name="history"))
            add_ops_routes(
                app, probes=probes, registry=registry, dlq=monitor.stats.snapshot, history=history,
                snapshot=lambda run: asyncio.to_thread(run_metrics_document, api_backend, run),
            )  # fmt: skip
        else:
            app = web.Application()
            add_ops_routes(app, probes=probes, registry=registry)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.http_host, settings.http_port).start()
        log.info("HTTP on http://%s:%d/ (healthz, readyz, metrics)", settings.http_host, settings.http_port)
    try:
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        stopper.cancel()
        deadline = settings.shutdown_grace_s + SHUTDOWN_SLACK_S
        if watchdog:  # only when this process is the service (it ends the process)
            _watchdog(deadline + WATCHDOG_EXTRA_S)
        _, pending = await asyncio.wait(tasks, timeout=deadline)
        if pending:
            log.warning("shutdown: %s still running %.0f s after the stop request; abandoning it (uncommitted "
                        "messages are re-delivered to the next owner)", ", ".join(t.get_name() for t in pending),
                        deadline)
            for t in pending:
                t.cancel()
            await asyncio.wait(pending, timeout=2.0)
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                if isinstance(t.exception(), KafkaStartAborted):
                    continue  # SIGTERM before the broker answered: a clean stop, exit 0
                raise cast(BaseException, t.exception())
    finally:
        for b in background:
            b.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if monitor is not None:
            await bounded(monitor.stop(), "DLQ monitor stop")
        if runner is not None:
            await runner.cleanup()
        if api_backend is not None:
            api_backend.close()


async def _start_monitor(monitor: DlqMonitor) -> None:
    """The DLQ view is best effort: retry until the broker answers, never fail the service."""
    while True:
        try:
            await monitor.start()
            return
        except RunstreamError as exc:
            log.warning("DLQ monitor not started yet: %s", exc)
            await asyncio.sleep(5)


async def _sample_history(store: StateBackend, history: MetricHistory, stop: asyncio.Event) -> None:
    """Sample run-level and per-feature values every few seconds for the dashboard trends."""
    def sample() -> None:
        now = time.time()
        for run, _updated in store.list_runs()[: history.max_runs]:
            history.record(run, now, run_level_values(store.metric_defs(run), store.run_aggs(run)))

    while not stop.is_set():
        try:
            await asyncio.to_thread(sample)
        except Exception as exc:  # a failed sample must not take the API down
            log.warning("metric history sample failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=5.0)
