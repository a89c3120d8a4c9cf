"""Operational HTTP routes mounted next to the query API: health, Prometheus, dashboard, DLQ, trends.

Everything here reads state other components own (probes, registry, DLQ monitor, metric
history) through callables and snapshots handed in by the CLI; nothing here writes it, so the
routes can never stall the consumers, and this layer never imports a consumer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from service.api.metric_history import MetricHistory
from service.api.models import MAX_ID_CHARS, DlqSummary, Error, Health, History, PipelineStatus, checked
from service.api.openapi import add_ops_operations
from service.api.pipeline_status import pipeline_status
from service.api.query_api import OPENAPI_KEY
from service.health import Probe, liveness, readiness

Snapshot = Callable[[str], Awaitable[dict[str, Any] | None]]
DlqSnapshot = Callable[[], dict[str, Any]]  # the DLQ monitor's current counts and recent letters


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json(checked(Error, {"error": {"status": status, "message": message}}), status)


def add_ops_routes(
    app: web.Application,
    *,
    probes: Sequence[Probe],
    registry: CollectorRegistry,
    stall_after_s: float = 60.0,
    dlq: DlqSnapshot | None = None,
    history: MetricHistory | None = None,
    snapshot: Snapshot | None = None,
    stream_interval_s: float = 1.0,
) -> None:
    """Mount /healthz, /readyz, /metrics, / (dashboard), /v1/dlq, and per-run history and live stream."""
    page = resources.files("service.api").joinpath("static/dashboard.html").read_bytes()

    async def healthz(_: web.Request) -> web.Response:
        verdict = liveness(probes, time.monotonic(), stall_after_s)
        return _json(checked(Health, verdict.as_json()), 200 if verdict.ok else 503)

    async def readyz(_: web.Request) -> web.Response:
        verdict = readiness(probes)
        return _json(checked(Health, verdict.as_json()), 200 if verdict.ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def dashboard(_: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    async def dlq_summary(_: web.Request) -> web.Response:
        if dlq is None:
            return _error(404, "the DLQ monitor is not running here")
        return _json(checked(DlqSummary, dlq()))

    def too_long(run: str) -> web.Response | None:
        if len(run) <= MAX_ID_CHARS:
            return None
        return _error(400, f"path parameter run: longer than {MAX_ID_CHARS} characters")

    async def pipeline(_: web.Request) -> web.Response:
        return _json(checked(PipelineStatus, pipeline_status(registry, dlq() if dlq is not None else None)))

    async def run_history(request: web.Request) -> web.Response:
        run = request.match_info["run"]
        if (bad := too_long(run)) is not None:
            return bad
        return _json(checked(History, {"model_run_id": run, "series": history.series(run) if history else []}))

    async def run_stream(request: web.Request) -> web.StreamResponse:
        """Server-sent events: the run's metrics document whenever it changes."""
        if snapshot is None:
            return _error(404, "live stream unavailable")
        run = request.match_info["run"]
        if (bad := too_long(run)) is not None:
            return bad
        first = await snapshot(run)
        if first is None:
            return _error(404, f"model run {run!r} has no aggregates")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        last = b""
        doc: dict[str, Any] | None = first
        while True:
            if doc is not None:
                body = orjson.dumps(doc)
                if body != last:
                    await resp.write(b"event: metrics\ndata: " + body + b"\n\n")
                    last = body
                else:
                    await resp.write(b": keep-alive\n\n")
            await asyncio.sleep(stream_interval_s)
            doc = await snapshot(run)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", dashboard)
    app.router.add_get("/v1/dlq", dlq_summary)
    app.router.add_get("/v1/model-runs/{run}/history", run_history)
    app.router.add_get("/v1/model-runs/{run}/stream", run_stream)
    app.router.add_get("/v1/pipeline", pipeline)
    document = app.get(OPENAPI_KEY)
    if document is not None:
        add_ops_operations(document)
