"""The OpenAPI 3.0 document of the query API's /v1 routes (served by service/query_api.py).

Its own module so the HTTP handlers read as handlers; the ops routes' paths are in
service/ops_openapi.py and merged into the same served document.
"""

from __future__ import annotations

from typing import Any

from service.events.constants import AGGREGATIONS
from service.events.schema import SCHEMA_NAMES


def openapi_document(
    *, max_id_chars: int, max_slice_rows: int, bearer_required: bool = False
) -> dict[str, Any]:
    """OpenAPI 3.0 description of /v1 (schemathesis tests the server against it).

    ``bearer_required``: the server was given RUNSTREAM_API_TOKEN, so /v1/* needs the bearer token;
    without one the API is open and the document declares no security requirement.
    """
    nullable_num = {"type": "number", "nullable": True}
    cm = {
        "type": "object",
        "required": ["tp", "fp", "tn", "fn", "precision", "recall", "f1"],
        "properties": {
            "tp": {"type": "integer"},
            "fp": {"type": "integer"},
            "tn": {"type": "integer"},
            "fn": {"type": "integer"},
            "precision": nullable_num,
            "recall": nullable_num,
            "f1": nullable_num,
        },
    }
    value = {"nullable": True, "oneOf": [{"type": "number"}, cm]}
    conf = {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["confidence", "value", "count"],
            "properties": {"confidence": {"type": "number"}, "value": value, "count": {"type": "integer"}},
        },
    }
    base_props = {"value": value, "count": {"type": "integer", "minimum": 0}, "confidence": conf}
    subclass = {
        "type": "object",
        "required": ["subclass", "value", "count", "confidence"],
        "properties": {"subclass": {"type": "string"}, **base_props},
    }
    feature = {
        "type": "object",
        "required": ["feature", "value", "count", "confidence", "subclasses"],
        "properties": {"feature": {"type": "string"}, **base_props, "subclasses": {"type": "array", "items": subclass}},
    }
    metric = {
        "type": "object",
        "required": ["metric", "aggregation", "value", "count", "confidence", "features"],
        "properties": {
            "metric": {"type": "string"},
            "aggregation": {
                "type": "string",
                "enum": list(AGGREGATIONS),
            },
            **base_props,
            "features": {"type": "array", "items": feature},
        },
    }
    error = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["status", "message"],
                "properties": {"status": {"type": "integer"}, "message": {"type": "string"}},
            }
        },
    }

    def err(desc: str) -> dict[str, Any]:
        return {
            "description": desc,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }

    def ok(schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": "OK", "content": {"application/json": {"schema": schema}}}

    metrics_list = {"type": "array", "items": {"$ref": "#/components/schemas/Metric"}}
    run_param = {
        "name": "run",
        "in": "path",
        "required": True,
        "description": "model run id",
        "schema": {"type": "string", "minLength": 1, "maxLength": max_id_chars},
    }
    auth_errors = {
        "400": err("a path parameter is too long"),
        "401": err("missing or wrong bearer token"),
        "404": err("unknown model run or data row"),
    }
    filter_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["metric"],
        "properties": {
            "metric": {"type": "string", "maxLength": max_id_chars},
            "feature": {"type": "string", "nullable": True, "maxLength": max_id_chars},
            "subclass": {"type": "string", "nullable": True, "maxLength": max_id_chars},
            "confidence": {"type": "number", "nullable": True, "minimum": 0, "maximum": 1},
            "min": nullable_num,
            "max": nullable_num,
        },
    }
    query_body = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "data_row_ids": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_slice_rows,
                "items": {"type": "string", "minLength": 1, "maxLength": max_id_chars},
            },
            "filter": filter_schema,
        },
        "oneOf": [{"required": ["data_row_ids"]}, {"required": ["filter"]}],
        "description": "exactly one of data_row_ids (a slice) or filter",
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "runstream aggregates", "version": "1"},
        "components": {
            "schemas": {"Metric": metric, "Error": error},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}] if bearer_required else [],
        "paths": {
            "/v1/model-runs": {
                "get": {
                    "summary": "model runs with aggregates",
                    "responses": {
                        "200": ok(
                            {
                                "type": "object",
                                "required": ["model_runs"],
                                "properties": {
                                    "model_runs": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["id", "updated_at"],
                                            "properties": {"id": {"type": "string"}, "updated_at": {"type": "number"}},
                                        },
                                    }
                                },
                            }
                        ),
                        "401": auth_errors["401"],
                    },
                }
            },
            "/v1/model-runs/{run}/metrics": {
                "get": {
                    "summary": "run-level, per-feature and per-subclass aggregates of every metric",
                    "parameters": [run_param],
                    "responses": {
                        "200": ok(
                            {
                                "type": "object",
                                "required": ["model_run_id", "metrics"],
                                "properties": {"model_run_id": {"type": "string"}, "metrics": metrics_list},
                            }
                        ),
                        **auth_errors,
                    },
                }
            },
            "/v1/model-runs/{run}/data-rows/{dr}/metrics": {
                "get": {
                    "summary": "one data row's metric tree ('id:X', 'gk:X', or bare X for either)",
                    "parameters": [
                        run_param,
                        {
                            "name": "dr",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": max_id_chars},
                        },
                    ],
                    "responses": {
                        "200": ok(
                            {
                                "type": "object",
                                "required": ["model_run_id", "data_row_id", "data_rows", "metrics"],
                                "properties": {
                                    "model_run_id": {"type": "string"},
                                    "data_row_id": {"type": "string"},
                                    "data_rows": {"type": "array", "items": {"type": "string"}},
                                    "metrics": metrics_list,
                                },
                            }
                        ),
                        **auth_errors,
                    },
                }
            },
            "/v1/schemas/{name}": {
                "get": {
                    "summary": "the JSON Schema (draft 2020-12) of an event, for producers to validate before sending",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "enum": list(SCHEMA_NAMES)},
                        }
                    ],
                    "responses": {
                        "200": ok({"type": "object"}),
                        "401": auth_errors["401"],
                        "404": err("unknown schema name"),
                    },
                }
            },
            "/v1/model-runs/{run}/metrics/query": {
                "post": {
                    "summary": "aggregates over a slice of data rows or the rows a filter selects",
                    "parameters": [run_param],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": query_body}}},
                    "responses": {
                        "200": ok(
                            {
                                "type": "object",
                                "required": ["model_run_id", "data_row_count", "metrics"],
                                "properties": {
                                    "model_run_id": {"type": "string"},
                                    "data_row_count": {"type": "integer"},
                                    "metrics": metrics_list,
                                },
                            }
                        ),
                        **auth_errors,
                        "400": err("invalid query body or path parameter"),
                        "413": err("request body too large"),
                        "415": err("Content-Type is not application/json"),
                    },
                }
            },
        },
    }
