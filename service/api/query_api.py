"""Query API over the aggregator's state (aiohttp): /v1/model-runs… and /openapi.json.

Why it reads the store and not the aggregator's memory: any replica (or a separate API
process) can answer for every model run, and it only ever shows committed — exactly-once —
state. Run-level and per-feature values come from the maintained aggregates (one indexed
read per run, independent of the number of leaves); slices and filters read node values of
the selected data rows through the (run, data row) and (run, metric, …, value) indexes.

Every bad request gets a 4xx JSON ``{"error": {"status", "message"}}``; store calls run in
a worker thread so a slow query never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from service.aggregation import (
    LEVEL_DATA_ROW,
    LEVEL_FEATURE,
    LEVEL_SUBCLASS,
    Agg,
    Value,
    aggregate,
    cm_ratios,
    confidence_key,
)
from service.api.models import (
    MAX_ID_CHARS,
    DataRowMetrics,
    Error,
    ModelRuns,
    QueryBody,
    QueryResult,
    RunMetrics,
    checked,
)
from service.api.openapi import query_api_document
from service.config import Settings
from service.events import schema as events_schema
from service.events.constants import DEFAULT_AGGREGATION, Aggregation
from service.events.schema import SCHEMA_NAMES
from service.state import NodeRow, StateBackend

MAX_BODY_BYTES = 1_048_576
# Two path ids of MAX_ID_CHARS characters, percent-encoded UTF-8 (up to 12 bytes a character), must
# fit the request line; aiohttp's default limit (8190 bytes) would answer a documented request with a
# plain-text 400 from the HTTP parser before the app (and its JSON errors) ever sees it.
MAX_REQUEST_LINE = 65_536

STORE_KEY = web.AppKey("runstream_state_backend", object)
JSON_TYPES = frozenset({"application/json"})

log = logging.getLogger("runstream.query_api")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json(checked(Error, {"error": {"status": status, "message": message}}), status)


def row_keys(data_row: str) -> list[str]:
    """A data row as the API user names it: ``id:X`` / ``gk:X`` exactly, or bare ``X`` for either."""
    if data_row.startswith(("id:", "gk:")):
        return [data_row]
    return [f"id:{data_row}", f"gk:{data_row}"]


def _fmt_value(value: Value | None) -> Any:
    if value is None:
        return None
    if isinstance(value, tuple):
        tp, fp, tn, fn = value
        return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, **cm_ratios(value)}
    return value if math.isfinite(value) else None


Entry = tuple[str, str, int, str, str, Value | None, int]  # metric, ck, level, f, s, value, count


def format_metrics(defs: dict[str, Aggregation], entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """Nest flat (metric, key, level, feature, subclass) results as metric → features → subclasses."""

    def blank(**kw: Any) -> dict[str, Any]:
        return {**kw, "value": None, "count": 0, "confidence": []}

    metrics: dict[str, dict[str, Any]] = {}
    for m, ck, level, f, s, value, count in entries:
        md = metrics.get(m)
        if md is None:
            md = metrics[m] = blank(metric=m, aggregation=defs.get(m, DEFAULT_AGGREGATION)) | {"features": {}}
        target = md
        if level >= LEVEL_FEATURE:
            target = md["features"].get(f)
            if target is None:
                target = md["features"][f] = blank(feature=f) | {"subclasses": {}}
            if level == LEVEL_SUBCLASS:
                sub = target["subclasses"].get(s)
                if sub is None:
                    sub = target["subclasses"][s] = blank(subclass=s)
                target = sub
        if ck == "":
            target["value"] = _fmt_value(value)
            target["count"] = count
        else:
            target["confidence"].append({"confidence": float(ck), "value": _fmt_value(value), "count": count})
    out = []
    for name in sorted(metrics):
        md = metrics[name]
        md["confidence"].sort(key=lambda c: c["confidence"])
        feats = []
        for fname in sorted(md["features"]):
            fd = md["features"][fname]
            fd["confidence"].sort(key=lambda c: c["confidence"])
            subs = []
            for sname in sorted(fd["subclasses"]):
                sd = fd["subclasses"][sname]
                sd["confidence"].sort(key=lambda c: c["confidence"])
                subs.append(sd)
            fd["subclasses"] = subs
            feats.append(fd)
        md["features"] = feats
        out.append(md)
    return out


def slice_entries(defs: dict[str, Aggregation], nodes: Sequence[NodeRow]) -> list[Entry]:
    """From-scratch aggregates over the given data rows' node values (a slice or a filter)."""
    groups: dict[tuple[str, str, int, str, str], list[Value]] = defaultdict(list)
    for n in nodes:
        if n.value is not None:
            groups[(n.metric, n.ck, n.level, n.feature, n.subclass)].append(n.value)
    return [
        (m, ck, lvl, f, s, aggregate(vals, defs.get(m, DEFAULT_AGGREGATION)), len(vals))
        for (m, ck, lvl, f, s), vals in groups.items()
    ]


def _run_document(
    run: str, defs: dict[str, Aggregation], rows: Sequence[tuple[str, str, int, str, str, Agg]]
) -> dict[str, Any]:
    entries = [(m, ck, lvl, f, s, a.result(defs.get(m, DEFAULT_AGGREGATION)), a.n) for m, ck, lvl, f, s, a in rows]
    return {"model_run_id": run, "metrics": format_metrics(defs, entries)}


def run_metrics_document(store: StateBackend, run: str) -> dict[str, Any] | None:
    """The body of GET /v1/model-runs/{run}/metrics (blocking; None for an unknown run)."""
    if not store.run_exists(run):
        return None
    return checked(RunMetrics, _run_document(run, store.metric_defs(run), store.run_aggs(run)))


def _defs_of_known_run(store: StateBackend, run: str) -> dict[str, Aggregation]:
    if not store.run_exists(run):
        raise web.HTTPNotFound(text=f"model run {run!r} has no aggregates")
    return store.metric_defs(run)


def data_row_document(store: StateBackend, run: str, dr: str) -> dict[str, Any]:
    """The body of GET /v1/model-runs/{run}/data-rows/{dr}/metrics (blocking; 404 as HTTPNotFound)."""
    defs = _defs_of_known_run(store, run)
    nodes = store.nodes_for_rows(run, row_keys(dr))
    if not nodes:
        raise web.HTTPNotFound(text=f"data row {dr!r} has no metrics in model run {run!r}")
    doc = {
        "model_run_id": run,
        "data_row_id": dr,
        "data_rows": sorted({n.data_row for n in nodes}),
        "metrics": format_metrics(defs, slice_entries(defs, nodes)),
    }
    return checked(DataRowMetrics, doc)


def query_document(store: StateBackend, run: str, body: QueryBody) -> dict[str, Any]:
    """The body of POST /v1/model-runs/{run}/metrics/query (blocking; 404/400 as HTTP exceptions).

    Why one blocking call for the whole answer: each hop between the event loop and a worker
    thread waits for a scheduler slot, which on a busy machine is what a query's tail latency
    is made of. A slice reads its rows' trees once by primary key; a filter is one statement,
    an index range scan joined to the trees. Either way the data rows counted are the ones
    whose trees yield nodes.
    """
    defs = _defs_of_known_run(store, run)
    if body.data_row_ids is not None:
        # distinct keys: a key repeated across two chunks of the IN list would count its trees twice
        nodes = store.nodes_for_rows(run, sorted({k for d in body.data_row_ids for k in row_keys(d)}))
    else:
        flt = body.filter
        assert flt is not None
        if flt.metric not in defs:
            raise web.HTTPBadRequest(text=f"filter.metric: model run {run!r} has no metric {flt.metric!r}")
        level = LEVEL_DATA_ROW if flt.feature is None else LEVEL_FEATURE if flt.subclass is None else LEVEL_SUBCLASS
        ck = "" if flt.confidence is None else confidence_key(flt.confidence)
        f, s = flt.feature or "", flt.subclass or ""
        nodes = store.nodes_in_range(run, flt.metric, ck, level, f, s, flt.min, flt.max)
    count = len({n.data_row for n in nodes})
    doc = {"model_run_id": run, "data_row_count": count, "metrics": format_metrics(defs, slice_entries(defs, nodes))}
    return checked(QueryResult, doc)


# The served OpenAPI document; routes mounted next to the query API (service.api.ops) add their paths to it.
OPENAPI_KEY: web.AppKey[dict[str, Any]] = web.AppKey("openapi", dict)


def build_query_app(store: StateBackend, settings: Settings) -> web.Application:
    """The /v1 API and /openapi.json; other routes (health, metrics, dashboard) may be added to it."""
    token = settings.api_token.get_secret_value() if settings.api_token else None
    # /openapi.json stays public on purpose: it holds no data, and clients (and readiness
    # probes, test harnesses) need it to learn that /v1/* wants a bearer token at all.

    @web.middleware
    async def errors_and_auth(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if token is not None and request.path.startswith("/v1/"):
            given = request.headers.get("Authorization", "")
            # Header bytes that are not UTF-8 arrive surrogate-escaped: encode them back, never raise.
            if not (
                given.startswith("Bearer ")
                and hmac.compare_digest(given[7:].encode("utf-8", "surrogateescape"), token.encode())
            ):
                resp = _error(401, "missing or wrong bearer token (Authorization: Bearer <RUNSTREAM_API_TOKEN>)")
                resp.headers["WWW-Authenticate"] = 'Bearer realm="runstream"'
                return resp
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error(exc.status, exc.reason if exc.text is None or exc.text.startswith("4") else exc.text)
        except Exception:
            log.exception("query API: unexpected error on %s %s", request.method, request.path)
            return _error(500, "internal error (logged by the server)")

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def list_runs(request: web.Request) -> web.Response:
        runs = await call(store.list_runs)
        return _json(checked(ModelRuns, {"model_runs": [{"id": r, "updated_at": t} for r, t in runs]}))

    def _check_param(name: str, value: str) -> None:
        if len(value) > MAX_ID_CHARS:
            raise web.HTTPBadRequest(text=f"path parameter {name}: longer than {MAX_ID_CHARS} characters")

    async def run_metrics(request: web.Request) -> web.Response:
        run = request.match_info["run"]
        _check_param("run", run)
        doc: dict[str, Any] | None = await call(run_metrics_document, store, run)
        if doc is None:
            raise web.HTTPNotFound(text=f"model run {run!r} has no aggregates")
        return _json(doc)

    async def data_row_metrics(request: web.Request) -> web.Response:
        run = request.match_info["run"]
        dr = request.match_info["dr"]
        _check_param("run", run)
        _check_param("dr", dr)
        doc: dict[str, Any] = await call(data_row_document, store, run, dr)
        return _json(doc)

    async def query(request: web.Request) -> web.Response:
        run = request.match_info["run"]
        _check_param("run", run)
        if request.content_type not in JSON_TYPES:
            raise web.HTTPUnsupportedMediaType(
                text=f"Content-Type must be application/json, not {request.content_type!r}"
            )
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=request.content_length)
        raw = await request.read()
        try:
            body = QueryBody.model_validate_json(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "body"
            return _error(400, f"{loc}: {err['msg']}")
        doc: dict[str, Any] = await call(query_document, store, run, body)
        return _json(doc)

    async def event_schema(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in SCHEMA_NAMES:
            raise web.HTTPNotFound(text=f"unknown event schema {name[:80]!r}; known: {', '.join(SCHEMA_NAMES)}")
        return _json(events_schema.event_schema(name))

    document = query_api_document(bearer_required=token is not None)

    async def openapi(request: web.Request) -> web.Response:
        return _json(document)

    app = web.Application(
        middlewares=[errors_and_auth],
        client_max_size=MAX_BODY_BYTES,
        handler_args={"max_line_size": MAX_REQUEST_LINE},
    )
    app[STORE_KEY] = store
    app[OPENAPI_KEY] = document
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/v1/model-runs", list_runs)
    app.router.add_get("/v1/model-runs/{run}/metrics", run_metrics)
    app.router.add_get("/v1/model-runs/{run}/data-rows/{dr}/metrics", data_row_metrics)
    app.router.add_post("/v1/model-runs/{run}/metrics/query", query)
    app.router.add_get("/v1/schemas/{name}", event_schema)
    return app
