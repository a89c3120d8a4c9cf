"""Admin API of the local Labelbox server: seed data, read back what was stored, inject faults.

Protected by ``Authorization: Bearer <admin token>``; faults never apply here, so a test
can always inspect and repair the server while /graphql is misbehaving on purpose.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from devstack.local_labelbox.faults import FaultSpecError
from devstack.local_labelbox.store import ImportRecord, StoreError

if TYPE_CHECKING:
    from devstack.local_labelbox.app import LocalLabelbox

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _err(message: str, status: int) -> web.Response:
    return _json({"error": message}, status)


def import_admin_json(rec: ImportRecord) -> dict[str, Any]:
    """Import record with server-side timing (used by the benchmark)."""
    secs = (
        rec.finished_at - rec.started_at if rec.finished_at is not None and rec.started_at is not None else None
    )
    return {
        "id": rec.id,
        "modelRunId": rec.model_run_id,
        "name": rec.name,
        "state": rec.state,
        "source": rec.source,
        "createdAt": rec.created_at,
        "startedAt": rec.started_at,
        "finishedAt": rec.finished_at,
        "processingSeconds": secs,
        "totalRows": rec.total_rows,
        "failureRows": rec.failure_rows,
        "errorMessage": rec.error_message,
    }


def admin_routes(server: LocalLabelbox) -> list[web.RouteDef]:
    def guarded(fn: Handler) -> Handler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or token.strip() != server.admin_token:
                return _err("admin token required: Authorization: Bearer <admin token>", 401)
            try:
                return await fn(request)
            except (StoreError, FaultSpecError) as exc:
                return _err(str(exc), 400)

        return wrapper

    async def body_list(request: web.Request, key: str) -> list[dict[str, Any]]:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise StoreError(f"body is not valid JSON: {exc}") from exc
        items = body.get(key) if isinstance(body, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise StoreError(f"body must be {{{key!r}: [objects]}}")
        return items

    async def seed_data_rows(request: web.Request) -> web.StreamResponse:
        rows = await body_list(request, "dataRows")
        return _json({"ids": await server.db(server.store.seed_data_rows, rows)})

    async def seed_projects(request: web.Request) -> web.StreamResponse:
        items = await body_list(request, "projects")
        return _json({"ids": await server.db(server.store.seed_projects, items)})

    async def seed_labels(request: web.Request) -> web.StreamResponse:
        items = await body_list(request, "labels")
        return _json({"ids": await server.db(server.store.seed_labels, items)})

    async def seed_model_runs(request: web.Request) -> web.StreamResponse:
        items = await body_list(request, "modelRuns")
        store = server.store

        def run() -> list[str]:
            return [
                store.create_model_run(
                    name=str(i.get("name") or "model run"),
                    model_id=str(i.get("modelId") or "local-model"),
                    training_metadata=i.get("trainingMetadata"),
                    run_id=i.get("id"),
                )["id"]
                for i in items
            ]

        ids = await server.db(run)
        if items and any(i.get("dataRowIds") for i in items):
            for rid, item in zip(ids, items, strict=True):
                if item.get("dataRowIds"):
                    await server.db(store.register_data_rows, rid, item["dataRowIds"], None)
        return _json({"ids": ids})

    def run_view(fn: Callable[[str], Any]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            run_id = request.match_info["run_id"]
            if await server.db(server.store.get_model_run, run_id) is None:
                return _err(f"model run {run_id} not found", 404)
            return _json(await server.db(fn, run_id))

        return handler

    def imports_of(run_id: str) -> list[dict[str, Any]]:
        return [import_admin_json(r) for r in server.store.imports_of(run_id)]

    async def get_import(request: web.Request) -> web.StreamResponse:
        rec = await server.db(server.store.get_import, request.match_info["import_id"])
        if rec is None:
            return _err("import not found", 404)
        return _json(import_admin_json(rec))

    async def list_faults(request: web.Request) -> web.StreamResponse:
        return _json({"faults": [r.to_json() for r in server.fault_rules]})

    async def add_fault(request: web.Request) -> web.StreamResponse:
        try:
            spec = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return _err(f"body is not valid JSON: {exc}", 400)
        if not isinstance(spec, dict):
            return _err("body must be a JSON object", 400)
        return _json(server.add_fault(spec).to_json())

    async def clear_faults(request: web.Request) -> web.StreamResponse:
        server.clear_faults()
        return _json({"faults": []})

    async def integrity(request: web.Request) -> web.StreamResponse:
        return _json({"ok": await server.db(server.store.integrity_ok)})

    s = server
    return [
        web.post("/admin/data-rows", guarded(seed_data_rows)),
        web.post("/admin/projects", guarded(seed_projects)),
        web.post("/admin/labels", guarded(seed_labels)),
        web.post("/admin/model-runs", guarded(seed_model_runs)),
        web.get("/admin/model-runs/{run_id}/predictions", guarded(run_view(lambda r: s.store.predictions(r)))),
        web.get("/admin/model-runs/{run_id}/metrics", guarded(run_view(lambda r: s.store.metrics(r)))),
        web.get("/admin/model-runs/{run_id}/data-rows", guarded(run_view(lambda r: s.store.run_data_rows(r)))),
        web.get("/admin/model-runs/{run_id}/counts", guarded(run_view(lambda r: s.store.counts(r)))),
        web.get("/admin/model-runs/{run_id}/imports", guarded(run_view(imports_of))),
        web.get("/admin/imports/{import_id}", guarded(get_import)),
        web.get("/admin/faults", guarded(list_faults)),
        web.post("/admin/faults", guarded(add_fault)),
        web.delete("/admin/faults", guarded(clear_faults)),
        web.get("/admin/integrity", guarded(integrity)),
    ]
