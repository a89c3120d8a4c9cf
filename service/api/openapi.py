"""The served OpenAPI document (/openapi.json), derived from the body models in service.api.models.

OpenAPI 3.1: its schemas are JSON Schema 2020-12, which is what pydantic emits (``anyOf`` with
``{"type": "null"}`` for an optional value), so the models' schemas go in unchanged. Each
operation below names its parameters, its request model and a model per response status; the
schemas of every model named land in ``components.schemas``. The query API serves
:func:`query_api_document`; the ops routes mounted next to it add theirs with :func:`add_ops_operations`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.api import models as m
from service.api.models import MAX_ID_CHARS
from service.events.schema import SCHEMA_NAMES

OPENAPI_VERSION = "3.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"

_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}
RUN = {"name": "run", "in": "path", "required": True, "description": "model run id", "schema": _ID}
DATA_ROW = {"name": "dr", "in": "path", "required": True, "schema": _ID}
SCHEMA_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "enum": list(SCHEMA_NAMES)}}

# A response: (description, model) for JSON, or (description, media type, literal schema) for anything else.
Response = tuple[str, type[BaseModel]] | tuple[str, str, dict[str, Any]]

UNAUTHORIZED: Response = ("missing or wrong bearer token", m.Error)
TOO_LONG: Response = ("a path parameter is too long", m.Error)


@dataclass(frozen=True)
class Operation:
    path: str
    method: str
    summary: str
    responses: dict[str, Response]
    parameters: list[dict[str, Any]] = field(default_factory=list)
    body: type[BaseModel] | None = None
    public: bool = False  # no bearer token even when the API has one


QUERY_OPERATIONS = [
    Operation(
        "/v1/model-runs",
        "get",
        "model runs with aggregates",
        {"200": ("OK", m.ModelRuns), "401": UNAUTHORIZED},
    ),
    Operation(
        "/v1/model-runs/{run}/metrics",
        "get",
        "run-level, per-feature and per-subclass aggregates of every metric",
        {"200": ("OK", m.RunMetrics), "400": TOO_LONG, "401": UNAUTHORIZED, "404": ("unknown model run", m.Error)},
        [RUN],
    ),
    Operation(
        "/v1/model-runs/{run}/data-rows/{dr}/metrics",
        "get",
        "one data row's metric tree ('id:X', 'gk:X', or bare X for either)",
        {
            "200": ("OK", m.DataRowMetrics),
            "400": TOO_LONG,
            "401": UNAUTHORIZED,
            "404": ("unknown model run or data row", m.Error),
        },
        [RUN, DATA_ROW],
    ),
    Operation(
        "/v1/model-runs/{run}/metrics/query",
        "post",
        "aggregates over a slice of data rows or the rows a filter selects",
        {
            "200": ("OK", m.QueryResult),
            "400": ("invalid query body or path parameter", m.Error),
            "401": UNAUTHORIZED,
            "404": ("unknown model run", m.Error),
            "413": ("request body too large", m.Error),
            "415": ("Content-Type is not application/json", m.Error),
        },
        [RUN],
        body=m.QueryBody,
    ),
    Operation(
        "/v1/schemas/{name}",
        "get",
        "the JSON Schema (draft 2020-12) of an event, for producers to validate before sending",
        {
            "200": ("OK", "application/json", {"type": "object"}),
            "401": UNAUTHORIZED,
            "404": ("unknown schema name", m.Error),
        },
        [SCHEMA_NAME],
    ),
]

OPS_OPERATIONS = [
    Operation(
        "/healthz",
        "get",
        "liveness: every consumer loop made progress within the stall limit",
        {"200": ("alive", m.Health), "503": ("a consumer loop is stalled", m.Health)},
        public=True,
    ),
    Operation(
        "/readyz",
        "get",
        "readiness: every consumer is connected, joined to its group and not recovering",
        {"200": ("ready", m.Health), "503": ("not ready (the checks say why)", m.Health)},
        public=True,
    ),
    Operation(
        "/v1/dlq",
        "get",
        "dead letters on the DLQ topic: counts by error class and the latest entries",
        {
            "200": ("OK", m.DlqSummary),
            "401": UNAUTHORIZED,
            "404": ("the DLQ monitor does not run in this process", m.Error),
        },
    ),
    Operation(
        "/v1/pipeline",
        "get",
        "the upload side: lag per consumer group, imports in flight by state, retries, "
        "Labelbox answers and errors by kind, dead letters by class",
        {"200": ("OK", m.PipelineStatus), "401": UNAUTHORIZED},
    ),
    Operation(
        "/v1/model-runs/{run}/history",
        "get",
        "trend series of run-level and per-feature values (F1 for confusion matrices)",
        {"200": ("OK", m.History), "400": TOO_LONG, "401": UNAUTHORIZED},
        [RUN],
    ),
    Operation(
        "/v1/model-runs/{run}/stream",
        "get",
        "live updates (server-sent events): an 'event: metrics' whose data is the "
        "GET /v1/model-runs/{run}/metrics document, each time it changes; comment keep-alives between",
        {
            "200": ("OK", "text/event-stream", {"type": "string"}),
            "400": TOO_LONG,
            "401": UNAUTHORIZED,
            "404": ("unknown model run, or no live stream in this process", m.Error),
        },
        [RUN],
    ),
]


def _paths_and_schemas(operations: list[Operation]) -> tuple[dict[str, Any], dict[str, Any]]:
    """OpenAPI path items of ``operations`` and the component schemas their models need."""
    models: dict[tuple[type[BaseModel], Literal["validation", "serialization"]], None] = {}  # ordered set
    for op in operations:
        if op.body is not None:
            models[(op.body, "validation")] = None
        for resp in op.responses.values():
            if len(resp) == 2:
                models[(resp[1], "serialization")] = None
    refs, top = models_json_schema(list(models), ref_template=REF_TEMPLATE)
    schemas: dict[str, Any] = top.get("$defs", {})

    def content(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
        return {media: {"schema": schema}}

    paths: dict[str, Any] = {}
    for op in operations:
        responses = {}
        for status, resp in op.responses.items():
            if len(resp) == 2:
                responses[status] = {"description": resp[0], "content": content(refs[(resp[1], "serialization")])}
            else:
                responses[status] = {"description": resp[0], "content": content(resp[2], resp[1])}
        item: dict[str, Any] = {"summary": op.summary, "responses": responses}
        if op.parameters:
            item["parameters"] = op.parameters
        if op.body is not None:
            item["requestBody"] = {"required": True, "content": content(refs[(op.body, "validation")])}
        if op.public:
            item["security"] = []
        paths.setdefault(op.path, {})[op.method] = item
    return paths, schemas


def query_api_document(*, bearer_required: bool = False) -> dict[str, Any]:
    """The document of the query API's routes.

    ``bearer_required``: the server was given RUNSTREAM_API_TOKEN, so /v1/* needs the bearer token;
    without one the API is open and the document declares no security requirement.
    """
    paths, schemas = _paths_and_schemas(QUERY_OPERATIONS)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "runstream aggregates", "version": "1"},
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}] if bearer_required else [],
        "paths": paths,
    }


def add_ops_operations(document: dict[str, Any]) -> None:
    """Add the ops routes (health, DLQ, pipeline, history, live stream) to a served document."""
    paths, schemas = _paths_and_schemas(OPS_OPERATIONS)
    document["paths"].update(paths)
    document["components"]["schemas"].update(schemas)
