"""Schemathesis against the /openapi.json the running query API serves.

The app runs on a real socket in its own thread and event loop (schemathesis calls are
synchronous), over a SQLite store filled by the real aggregation path (test_query_api.populate).
Positive and negative cases, deterministic, a modest number of examples per operation; checks: no
5xx, documented status codes, documented content types, response bodies that match the schemas.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import orjson
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, SecretStr, ValidationError
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from test_query_api import RUN, TOKEN, populate

from consumers.dlq.headers import DlqHeaders
from consumers.dlq.monitor import DlqMonitor
from service.api.metric_history import MetricHistory
from service.api.models import DlqSummary, Metric, checked
from service.api.openapi import OPS_OPERATIONS, QUERY_OPERATIONS
from service.api.ops import add_ops_routes
from service.api.query_api import build_query_app, run_metrics_document
from service.config import Settings
from service.health import Probe
from service.prometheus import ConsumerMetrics
from service.state import SqlStateBackend

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = 40
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def start_app(store: Path, token: str) -> tuple[web.AppRunner, SqlStateBackend, str]:
    """The query API with the ops routes mounted as `runstream run` mounts them (DLQ, pipeline,
    history, live stream), fed with a few values so that every document has content."""
    backend = SqlStateBackend.sqlite(store)
    settings = Settings(_env_file=None, api_token=SecretStr(token))  # type: ignore[call-arg]
    app = build_query_app(backend, settings)
    registry = CollectorRegistry()
    metrics = ConsumerMetrics.create(registry)
    metrics.consumer_lag.labels("g", "t", "0").set(3)
    metrics.labelbox_requests.labels("createModelErrorAnalysisPredictionImport", "5xx").inc()
    metrics.imports_in_flight.labels("g", "running").inc()
    dlq = DlqMonitor(settings)  # never started: its stats are filled by hand
    headers = DlqHeaders(error_class="schema", error_message="metrics[0].value: must be a number",
                         source_topic="t", source_partition=0, source_offset=7, consumer_group="g")  # fmt: skip
    dlq.stats.add(0, 0, headers.to_kafka())
    rejected = DlqHeaders(error_class="labelbox.model_run", error_message="Labelbox rejected model run 'mr-1': gone",
                          source_topic="t", source_partition=1, source_offset=3, consumer_group="g")  # fmt: skip
    dlq.stats.add(0, 1, rejected.to_kafka())
    history = MetricHistory()
    history.record(RUN, 1.0, [("am", "", 0.5), ("am", "cat", 0.25)])
    aggregator = Probe("aggregator", time.monotonic, lambda: None)  # alive and ready
    add_ops_routes(
        app, probes=[aggregator], registry=registry, dlq=dlq.stats.snapshot, history=history, stream_interval_s=0.1,
        snapshot=lambda run: asyncio.to_thread(run_metrics_document, backend, run),
    )  # fmt: skip
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, backend, f"http://127.0.0.1:{runner.addresses[0][1]}"


class ThreadedApi:
    """The query API served from a background thread with its own event loop."""

    def __init__(self, store: Path, token: str | None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="query-api", daemon=True)
        self._thread.start()
        self._runner, self._backend, self.url = asyncio.run_coroutine_threadsafe(
            start_app(store, token), self._loop
        ).result(30)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._backend.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def _config() -> Any:
    """Explicit, so no schemathesis.toml found up the tree changes what runs here."""
    config = schemathesis.Config.from_dict(
        {
            "seed": 20260525,
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True},
        }
    )
    config.projects.default.update(headers=AUTH)
    return config


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedApi]:
    store = tmp_path_factory.mktemp("query_api_st") / "state.sqlite3"
    populate(store)
    api = ThreadedApi(store, TOKEN)
    yield api
    api.close()


@pytest.fixture(scope="module")
def api_schema(server: ThreadedApi) -> Any:
    return schemathesis.openapi.from_url(server.url + "/openapi.json", config=_config())


# Every operation of the document, tested one by one (the set is checked against the document below).
# Not schemathesis.pytest.from_fixture: schemathesis 4.32.5's lazy pytest plugin reads a private
# pytest attribute (Function._nodeid) that pytest 9 no longer has; hypothesis drives the strategies here.
OPERATIONS = [
    ("GET", "/v1/model-runs"),
    ("GET", "/v1/model-runs/{run}/metrics"),
    ("GET", "/v1/model-runs/{run}/data-rows/{dr}/metrics"),
    ("POST", "/v1/model-runs/{run}/metrics/query"),
    ("GET", "/v1/dlq"),
    ("GET", "/v1/pipeline"),
    ("GET", "/v1/model-runs/{run}/history"),
    ("GET", "/v1/model-runs/{run}/stream"),
    ("GET", "/v1/schemas/{name}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
]
NO_PARAMETERS = {"/v1/model-runs", "/v1/dlq", "/v1/pipeline", "/healthz", "/readyz"}
STREAM = "/v1/model-runs/{run}/stream"  # an endless body: tested by test_live_stream_conforms


def test_operations_are_all_covered(api_schema: Any) -> None:
    ops = {(r.ok().method.upper(), r.ok().path) for r in api_schema.get_all_operations()}
    assert ops == set(OPERATIONS)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api_conforms_to_its_openapi_document(api_schema: Any, method: str, path: str, mode: GenerationMode) -> None:
    op = api_schema[path][method]
    if mode == GenerationMode.NEGATIVE and path in NO_PARAMETERS:
        pytest.skip("no parameters and no body: nothing to make invalid")
    if path == STREAM:
        pytest.skip("server-sent events never end; test_live_stream_conforms reads the first event")
    seen: Counter[int] = Counter()
    with requests.Session() as session:
        # Generated run ids never exist; half the cases use the populated run so that real aggregates
        # (and the slice/filter paths over them) are checked against the response schemas too.
        known: dict[str, str] = {}
        if "{run}" in path:
            known["run"] = RUN
        if "{dr}" in path:
            known["dr"] = "d1"
        strategy = op.as_strategy(generation_mode=mode)
        if known and mode == GenerationMode.POSITIVE:
            strategy = strategy | op.as_strategy(generation_mode=mode, path_parameters=known)

        @hypothesis.given(case=strategy)
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            checks = [*CHECKS, negative_data_rejection] if mode == GenerationMode.NEGATIVE else CHECKS
            response = case.call_and_validate(session=session, headers=AUTH, checks=checks)
            seen[response.status_code] += 1

        run()
    print(f"{method} {path} {mode.value}: statuses {dict(sorted(seen.items()))}")
    if mode == GenerationMode.POSITIVE:
        assert seen[200] > 0, seen  # the known-run share reached real aggregates
    else:
        assert seen and all(400 <= s < 500 for s in seen), seen


def test_known_run_paths_conform(server: ThreadedApi, api_schema: Any) -> None:
    """Real values (confusion matrices with nulls, confidence lists, subclasses) against the response schemas."""
    with requests.Session() as s:
        for result in api_schema.get_all_operations():
            op = result.ok()
            if op.path == STREAM:
                continue
            params: dict[str, str] = {}
            if "{run}" in op.path:
                params["run"] = RUN
            if "{dr}" in op.path:
                params["dr"] = "d1"
            if "{name}" in op.path:
                params["name"] = "metric-event"
            bodies: list[Any] = [None]
            if op.method.upper() == "POST":
                bodies = [{"data_row_ids": ["d1", "g3", "dup"]}, {"filter": {"metric": "am", "min": 0.3}}]
            for body in bodies:
                kw: dict[str, Any] = {"path_parameters": params}
                if body is not None:
                    kw["body"] = body
                    kw["media_type"] = "application/json"
                case = op.Case(**kw)
                response = case.call_and_validate(session=s, headers=AUTH, checks=CHECKS)
                assert response.status_code == 200, response.text


def test_live_stream_conforms(server: ThreadedApi) -> None:
    """The first server-sent event is the run's metrics document; unknown and too long runs are
    the documented JSON errors."""
    doc = requests.get(server.url + "/openapi.json", timeout=10).json()
    responses = doc["paths"][STREAM]["get"]["responses"]
    assert list(responses["200"]["content"]) == ["text/event-stream"]
    with requests.get(f"{server.url}/v1/model-runs/{RUN}/stream", headers=AUTH, stream=True, timeout=10) as r:
        assert r.status_code == 200 and r.headers["Content-Type"] == "text/event-stream"
        lines = r.iter_lines()
        assert next(lines) == b"event: metrics"
        data = next(lines)
    assert data.startswith(b"data: ")
    body = orjson.loads(data[len(b"data: "):])
    assert body["model_run_id"] == RUN and body["metrics"]
    metrics_doc = requests.get(f"{server.url}/v1/model-runs/{RUN}/metrics", headers=AUTH, timeout=10).json()
    assert body == metrics_doc
    for run, status in (("no-such-run", 404), ("x" * 5000, 400)):
        r = requests.get(f"{server.url}/v1/model-runs/{run}/stream", headers=AUTH, timeout=10)
        assert str(status) in responses and r.status_code == status, (status, r.status_code, r.text)
        assert r.headers["Content-Type"].startswith("application/json") and "message" in r.json()["error"]
    assert requests.get(f"{server.url}/v1/model-runs/{RUN}/stream", timeout=10).status_code == 401


def _model_of(method: str, path: str, status: int) -> type[BaseModel] | None:
    for op in [*QUERY_OPERATIONS, *OPS_OPERATIONS]:
        if (op.method.upper(), op.path) == (method, path):
            resp = op.responses[str(status)]
            return resp[1] if len(resp) == 2 else None
    raise AssertionError(f"{method} {path} is not in the document")


def test_every_response_is_its_declared_model(server: ThreadedApi) -> None:
    """Each operation's answers (real aggregates, errors) parsed by the model the document names for
    the status: strict types, and a field the model does not declare fails here."""
    urls = [
        ("GET", "/v1/model-runs", "/v1/model-runs", None),
        ("GET", "/v1/model-runs/{run}/metrics", f"/v1/model-runs/{RUN}/metrics", None),
        ("GET", "/v1/model-runs/{run}/metrics", "/v1/model-runs/nope/metrics", None),
        ("GET", "/v1/model-runs/{run}/data-rows/{dr}/metrics", f"/v1/model-runs/{RUN}/data-rows/d1/metrics", None),
        ("GET", "/v1/model-runs/{run}/data-rows/{dr}/metrics", f"/v1/model-runs/{RUN}/data-rows/zz/metrics", None),
        ("POST", "/v1/model-runs/{run}/metrics/query", f"/v1/model-runs/{RUN}/metrics/query",
         {"data_row_ids": ["d1", "g3", "dup"]}),
        ("POST", "/v1/model-runs/{run}/metrics/query", f"/v1/model-runs/{RUN}/metrics/query",
         {"filter": {"metric": "cmc", "confidence": 0.5}}),
        ("POST", "/v1/model-runs/{run}/metrics/query", f"/v1/model-runs/{RUN}/metrics/query", {"filter": {}}),
        ("GET", "/v1/dlq", "/v1/dlq", None),
        ("GET", "/v1/pipeline", "/v1/pipeline", None),
        ("GET", "/v1/model-runs/{run}/history", f"/v1/model-runs/{RUN}/history", None),
        ("GET", "/v1/model-runs/{run}/history", "/v1/model-runs/" + "x" * 2000 + "/history", None),
        ("GET", "/healthz", "/healthz", None),
        ("GET", "/readyz", "/readyz", None),
    ]  # fmt: skip
    statuses: Counter[int] = Counter()
    with requests.Session() as s:
        for method, path, url, body in urls:
            r = s.request(method, server.url + url, json=body, headers=AUTH, timeout=10)
            statuses[r.status_code] += 1
            model = _model_of(method, path, r.status_code)
            assert model is not None
            model.model_validate_json(r.content)  # ValidationError names the undeclared or mistyped field
        doc = r.json()
    assert doc == {"status": "ok", "checks": {"aggregator": "ok"}}
    assert statuses == {200: 10, 404: 2, 400: 2}
    dlq = s.get(server.url + "/v1/dlq", headers=AUTH, timeout=10).json()
    assert dlq["rejected_model_runs"][0]["model_run_id"] == "mr-1"  # declared, so the dashboard's panel is


def test_a_field_the_model_does_not_declare_is_never_served() -> None:
    """The ops routes serve what their callables return only once it fits the declared model: a DLQ
    snapshot with an undeclared field is a JSON 500, not an undocumented field."""
    good = {"total": 0, "by_class": {}, "recent": [], "rejected_model_runs": []}
    assert checked(DlqSummary, good) is good
    with pytest.raises(ValidationError, match="surprise"):
        checked(DlqSummary, {**good, "surprise": 1})
    with pytest.raises(ValidationError, match=r"recent\.0\.extra"):
        entry = {"error_class": "x", "message": "m", "source": "t[0]@1", "dlq_partition": 0, "dlq_offset": 1}
        checked(DlqSummary, {**good, "recent": [{**entry, "failed_at": None, "extra": True}]})

    async def serve() -> tuple[int, Any]:
        app = web.Application(middlewares=[json_errors])
        add_ops_routes(app, probes=[], registry=CollectorRegistry(), dlq=lambda: {**good, "surprise": 1})
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/dlq"
            r = await asyncio.to_thread(requests.get, url, timeout=10)
            return r.status_code, r.text
        finally:
            await runner.cleanup()

    status, text = asyncio.run(serve())
    assert status == 500 and "surprise" not in text


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ValidationError:
        return web.json_response({"error": {"status": 500, "message": "internal error"}}, status=500)


def test_document_schemas_are_closed_and_derived(server: ThreadedApi) -> None:
    """The served components are the models' own JSON Schemas, every model's schema forbids
    undeclared properties (nested models are components too), and every $ref resolves."""
    doc = requests.get(server.url + "/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    for name in ("Metric", "QueryResult", "DlqSummary", "PipelineStatus", "History", "Health", "Error", "QueryBody"):
        assert name in schemas, name

    for name, schema in schemas.items():
        assert schema["type"] == "object" and schema["additionalProperties"] is False, name

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref is not None:
                assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, (where, ref)
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(doc["components"], "components")
    walk(doc["paths"], "paths")
    metric = Metric.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
    assert schemas["Metric"] == {k: v for k, v in metric.items() if k != "$defs"}
