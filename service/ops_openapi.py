"""OpenAPI path items of the /v1 routes service.ops_http mounts next to the query API (DLQ, pipeline,
trend history, live stream); ``add_ops_routes`` merges them into the query API's served document."""

from __future__ import annotations

from typing import Any

from service.query_api import MAX_ID_CHARS

__all__ = ["ops_openapi_paths"]


def ops_openapi_paths() -> dict[str, Any]:
    """Path items for /v1/dlq, /v1/pipeline, /v1/model-runs/{run}/history and /v1/model-runs/{run}/stream."""

    def err(desc: str) -> dict[str, Any]:
        schema = {"$ref": "#/components/schemas/Error"}
        return {"description": desc, "content": {"application/json": {"schema": schema}}}

    def ok(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
        return {"description": "OK", "content": {media: {"schema": schema}}}

    count_map = {"type": "object", "additionalProperties": {"type": "number"}}
    run_param = {
        "name": "run",
        "in": "path",
        "required": True,
        "description": "model run id",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS},
    }
    dlq_entry = {
        "type": "object",
        "required": ["error_class", "message", "source", "dlq_partition", "dlq_offset", "failed_at"],
        "properties": {
            "error_class": {"type": "string"},
            "message": {"type": "string"},
            "source": {"type": "string", "description": "topic[partition]@offset of the original message"},
            "dlq_partition": {"type": "integer"},
            "dlq_offset": {"type": "integer"},
            "failed_at": {"type": "string", "nullable": True, "description": "ISO-8601 UTC"},
        },
    }
    dlq_counts = {
        "type": "object",
        "required": ["total", "by_class"],
        "properties": {"total": {"type": "integer"}, "by_class": count_map},
    }
    group = {
        "type": "object",
        "required": ["group", "events"],
        "properties": {
            "group": {"type": "string"},
            "lag": {"type": "number", "description": "highwater minus committed, summed over partitions"},
            "lag_stored": {"type": "number", "description": "highwater minus processed"},
            "in_flight_batches": {"type": "number"},
            "buffered_bytes": {"type": "number"},
            "paused": {"type": "number"},
            "ready": {"type": "number"},
            "superseded_rows": {"type": "number"},
            "events": {**count_map, "description": "input messages by outcome (delivered, applied, dlq, ...)"},
        },
    }
    return {
        "/v1/dlq": {
            "get": {
                "summary": "dead letters on the DLQ topic: counts by error class and the latest entries",
                "responses": {
                    "200": ok(
                        {
                            "type": "object",
                            "required": ["total", "by_class", "recent"],
                            "properties": {
                                "total": {"type": "integer"},
                                "by_class": count_map,
                                "recent": {"type": "array", "items": dlq_entry},
                            },
                        }
                    ),
                    "401": err("missing or wrong bearer token"),
                    "404": err("the DLQ monitor does not run in this process"),
                },
            }
        },
        "/v1/pipeline": {
            "get": {
                "summary": "the upload side: lag per consumer group, imports in flight by state, retries, "
                "Labelbox answers and errors by kind, dead letters by class",
                "responses": {
                    "200": ok(
                        {
                            "type": "object",
                            "required": ["groups", "imports", "retries", "labelbox", "dlq_written_here", "dlq"],
                            "properties": {
                                "groups": {"type": "array", "items": group},
                                "imports": count_map,
                                "retries": count_map,
                                "labelbox": {
                                    "type": "object",
                                    "required": ["requests_by_status", "errors"],
                                    "properties": {
                                        "requests_by_status": count_map,
                                        "errors": {"type": "object", "additionalProperties": count_map},
                                    },
                                },
                                "dlq_written_here": count_map,
                                "dlq": {**dlq_counts, "nullable": True},
                            },
                        }
                    ),
                    "401": err("missing or wrong bearer token"),
                },
            }
        },
        "/v1/model-runs/{run}/history": {
            "get": {
                "summary": "trend series of run-level and per-feature values (F1 for confusion matrices)",
                "parameters": [run_param],
                "responses": {
                    "200": ok(
                        {
                            "type": "object",
                            "required": ["model_run_id", "series"],
                            "properties": {
                                "model_run_id": {"type": "string"},
                                "series": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["metric", "feature", "points"],
                                        "properties": {
                                            "metric": {"type": "string"},
                                            "feature": {"type": "string", "nullable": True},
                                            "points": {
                                                "type": "array",
                                                "description": "[unix time, value] pairs, oldest first",
                                                "items": {
                                                    "type": "array",
                                                    "items": {"type": "number"},
                                                    "minItems": 2,
                                                    "maxItems": 2,
                                                },
                                            },
                                        },
                                    },
                                },
                            },
                        }
                    ),
                    "400": err("a path parameter is too long"),
                    "401": err("missing or wrong bearer token"),
                },
            }
        },
        "/v1/model-runs/{run}/stream": {
            "get": {
                "summary": "live updates (server-sent events): an 'event: metrics' whose data is the "
                "GET /v1/model-runs/{run}/metrics document, each time it changes; comment keep-alives between",
                "parameters": [run_param],
                "responses": {
                    "200": ok({"type": "string"}, "text/event-stream"),
                    "400": err("a path parameter is too long"),
                    "401": err("missing or wrong bearer token"),
                    "404": err("unknown model run, or no live stream in this process"),
                },
            }
        },
    }
