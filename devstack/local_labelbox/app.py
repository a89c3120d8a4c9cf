"""The local Labelbox-compatible server: HTTP wiring, auth, faults, background imports.

This is the imperative shell. GraphQL parsing/validation is graphql-core against
schema.graphql; behaviour lives in resolvers.py (operations), imports.py (row decisions),
faults.py (fault plan) and store.py (SQLite). All store calls run on one DB thread.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp import web
from graphql import (
    DocumentNode,
    ExecutionResult,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    build_schema,
    execute,
    parse,
    validate,
)

from devstack.local_labelbox import faults
from devstack.local_labelbox.imports import plan_import
from devstack.local_labelbox.resolvers import RequestContext, Resolvers, UploadedFile
from devstack.local_labelbox.store import ImportRecord, Store

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_BODY_SIZE = 256 * 1024 * 1024
_DOC_CACHE_SIZE = 256


def load_schema() -> GraphQLSchema:
    sdl = resources.files("devstack.local_labelbox").joinpath("schema.graphql").read_text()
    return build_schema(sdl)


def _default_parse_row() -> Callable[..., Any]:
    """Row validation is the shared event contract (service.events), imported late so the
    server still starts (and reports clearly) while that module is being written."""
    from service.events import parse_ndjson_row

    return parse_ndjson_row


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def lb_errors(message: str, code: str, status: int) -> web.Response:
    """A Labelbox/Apollo-shaped error response."""
    return _json({"errors": [{"message": message, "extensions": {"code": code}}], "data": None}, status)


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class LocalLabelbox:
    """A real HTTP server speaking Labelbox's GraphQL subset; use as an async context manager.

    ``url`` is the GraphQL endpoint to give ``labelbox.Client(endpoint=...)``;
    ``admin_url`` is the base of the admin API (docs/LOCAL_LABELBOX.md).
    """

    def __init__(
        self,
        db_path: str,
        *,
        api_keys: list[str] | tuple[str, ...],
        admin_token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        parse_row: Callable[..., Any] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.db_path = db_path
        self.api_keys = frozenset(api_keys)
        self.admin_token = admin_token
        self.host = host
        self.port = port
        self.max_body_size = max_body_size
        self._parse_row = parse_row
        self.rng = rng or random.Random()
        self.schema = load_schema()
        self.fault_rules: tuple[faults.FaultRule, ...] = ()
        self._next_rule_id = 1
        self._resolvers = Resolvers(self)
        self._docs: dict[str, DocumentNode] = {}
        # query text -> its validation errors against the (fixed) schema. graphql-core's validate
        # costs ~1 ms a request, more than the rest of a status poll; clients repeat a few queries.
        self._validated: dict[str, list[GraphQLError]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._store: Store | None = None
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    # ---- lifecycle -------------------------------------------------------------------
    @property
    def store(self) -> Store:
        assert self._store is not None, "server not started"
        return self._store

    def db(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        """Run a store call on the single DB thread."""
        assert self._executor is not None, "server not started"
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/graphql"

    @property
    def admin_url(self) -> str:
        return f"{self.base_url}/admin"

    def build_app(self) -> web.Application:
        from devstack.local_labelbox.admin import admin_routes

        app = web.Application(client_max_size=self.max_body_size)
        app.router.add_post("/graphql", self.handle_graphql)
        # The SDK's experimental calls (ModelRun.assign_data_rows_to_split) go to /_gql.
        app.router.add_post("/_gql", self.handle_graphql)
        app.router.add_get("/files/imports/{import_id}/{kind}.ndjson", self.handle_file)
        app.router.add_get("/health", self.handle_health)
        app.router.add_routes(admin_routes(self))
        return app

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-labelbox-db")
        self._store = await self.db(Store, self.db_path)
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))
        self._runner = web.AppRunner(self.build_app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            server = site._server
            assert isinstance(server, asyncio.base_events.Server)
            self.port = server.sockets[0].getsockname()[1]
        # Imports interrupted by a restart are processed again from their stored input.
        for rec in await self.db(self.store.running_imports):
            self._spawn(rec)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._store is not None:
            await self.db(self._store.close)
            self._store = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def __aenter__(self) -> LocalLabelbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for_imports(self) -> None:
        """Wait until every background import has been processed (tests, benchmarks)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ---- faults ----------------------------------------------------------------------
    def add_fault(self, spec: dict[str, Any]) -> faults.FaultRule:
        rule = faults.parse_rule(spec, self._next_rule_id)
        self._next_rule_id += 1
        self.fault_rules = (*self.fault_rules, rule)
        return rule

    def clear_faults(self) -> None:
        self.fault_rules = ()

    # ---- imports ---------------------------------------------------------------------
    async def start_import(
        self, model_run_id: str, name: str, source: str, file_url: str | None, payload: bytes | None
    ) -> ImportRecord | None:
        fail, self.fault_rules = faults.take_import_failure(self.fault_rules, self.rng.random())
        rec = await self.db(self.store.create_import, model_run_id, name, source, file_url, payload, fail)
        if rec is not None:
            self._spawn(rec, payload)
        return rec

    def _spawn(self, rec: ImportRecord, payload: bytes | None = None) -> None:
        """Process an import in the background; ``payload`` is its stored input when the caller
        has it at hand (a fresh upload), else it is read back from the store (or fetched)."""
        task = asyncio.create_task(self._process(rec, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(self, rec: ImportRecord, payload: bytes | None) -> None:
        store = self.store
        try:
            if rec.fail_requested:
                await self.db(store.mark_started, rec.id)
                await self.db(store.fail_import, rec.id, "Import failed (injected fault)")
                return
            if payload is None:
                payload = await self.db(store.get_file, rec.id, "input")
            if payload is None:
                try:
                    payload = await self._fetch(rec.file_url or "")
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    await self.db(store.fail_import, rec.id, f"Could not fetch fileUrl: {exc}")
                    return
                await self.db(store.put_input, rec.id, payload)
            await self.db(self._process_sync, rec, payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("import %s failed", rec.id)
            await self.db(store.fail_import, rec.id, f"Internal error: {exc}")

    async def _fetch(self, url: str) -> bytes:
        assert self._http is not None
        async with self._http.get(url) as resp:
            resp.raise_for_status()
            body = await resp.content.read(self.max_body_size + 1)
            if len(body) > self.max_body_size:
                raise ValueError(f"file is over the limit of {self.max_body_size} bytes")
            return body

    def _process_sync(self, rec: ImportRecord, payload: bytes) -> None:
        store = self.store
        store.mark_started(rec.id)
        ids, gks = store.run_members(rec.model_run_id)
        parse_row = self._parse_row or _default_parse_row()
        # Tens of thousands of live row objects make the cyclic GC rescan them over and over
        # (measured: more than half the import time); nothing here creates cycles.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            plan = plan_import(
                payload,
                model_run_id=rec.model_run_id,
                import_id=rec.id,
                run_data_row_ids=ids,
                run_global_keys=gks,
                parse_row=parse_row,
            )
            store.finish_import(rec, plan)
        finally:
            if gc_was_enabled:
                gc.enable()

    # ---- HTTP ------------------------------------------------------------------------
    async def handle_health(self, request: web.Request) -> web.Response:
        return _json({"ok": True})

    async def handle_file(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        if kind not in ("input", "status", "errors"):
            raise web.HTTPNotFound()
        body = await self.db(self.store.get_file, request.match_info["import_id"], kind)
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body, content_type="application/x-ndjson")

    async def _read_request(self, request: web.Request) -> tuple[dict[str, Any], UploadedFile | None, str | None]:
        """(operations, uploaded file, the variable path it maps to)."""
        if request.content_length is not None and request.content_length > self.max_body_size:
            raise BadRequest(
                f"Request body is {request.content_length} bytes, over the limit of {self.max_body_size}", 413
            )
        if request.content_type.startswith("multipart/"):
            return await self._read_multipart(request)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise BadRequest(f"Request body is over the limit of {self.max_body_size} bytes", 413) from exc
        try:
            ops = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"Request body is not valid JSON: {exc}") from exc
        if not isinstance(ops, dict):
            raise BadRequest("Request body must be a JSON object with 'query' and 'variables'")
        return ops, None, None

    async def _read_multipart(
        self, request: web.Request
    ) -> tuple[dict[str, Any], UploadedFile | None, str | None]:
        try:
            reader = await request.multipart()
            ops: Any = None
            mapping: Any = None
            upload: UploadedFile | None = None
            target: str | None = None
            total = 0
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, aiohttp.BodyPartReader):
                    raise BadRequest("nested multipart is not supported")
                chunks: list[bytes] = []
                while chunk := await part.read_chunk(1 << 20):
                    total += len(chunk)
                    if total > self.max_body_size:
                        raise BadRequest(f"Request body is over the limit of {self.max_body_size} bytes", 413)
                    chunks.append(chunk)
                data = b"".join(chunks)
                if part.name == "operations":
                    ops = orjson.loads(data)
                elif part.name == "map":
                    mapping = orjson.loads(data)
                elif isinstance(mapping, dict) and part.name in mapping:
                    paths = mapping[part.name]
                    if not isinstance(paths, list) or len(paths) != 1 or not isinstance(paths[0], str):
                        raise BadRequest(f"map entry for {part.name!r} must be a list of one variable path")
                    upload, target = UploadedFile(part.filename or part.name or "", data), paths[0]
        except (orjson.JSONDecodeError, ValueError, aiohttp.ClientError) as exc:
            if isinstance(exc, BadRequest):
                raise
            raise BadRequest(f"Malformed multipart request: {exc}") from exc
        if not isinstance(ops, dict):
            raise BadRequest("Malformed multipart request: missing or invalid 'operations' part")
        if not isinstance(mapping, dict):
            raise BadRequest("Malformed multipart request: missing or invalid 'map' part")
        if upload is None:
            raise BadRequest("Malformed multipart request: no file part named in 'map'")
        return ops, upload, target

    def _document(self, query: str) -> DocumentNode:
        doc = self._docs.get(query)
        if doc is None:
            doc = parse(query)
            if len(self._docs) >= _DOC_CACHE_SIZE:
                oldest = next(iter(self._docs))
                del self._docs[oldest]
                self._validated.pop(oldest, None)
            self._docs[query] = doc
        return doc

    def _validate(self, query: str, doc: DocumentNode) -> list[GraphQLError]:
        errors = self._validated.get(query)
        if errors is None:
            errors = self._validated[query] = validate(self.schema, doc)
        return errors

    async def handle_graphql(self, request: web.Request) -> web.StreamResponse:
        try:
            ops, upload, target = await self._read_request(request)
        except BadRequest as exc:
            return lb_errors(str(exc), "MALFORMED_REQUEST", exc.status)
        query = ops.get("query")
        variables = ops.get("variables")
        op_name = ops.get("operationName")
        if not isinstance(query, str):
            return lb_errors("Request must contain a 'query' string", "MALFORMED_REQUEST", 400)
        if variables is None:
            variables = {}
        if not isinstance(variables, dict) or (op_name is not None and not isinstance(op_name, str)):
            return lb_errors("'variables' must be an object and 'operationName' a string", "MALFORMED_REQUEST", 400)
        if upload is not None:
            if target is None or not target.startswith("variables.") or "." in target[len("variables.") :]:
                return lb_errors(f"Unsupported map target {target!r}", "MALFORMED_REQUEST", 400)
            variables[target[len("variables.") :]] = upload
        try:
            doc = self._document(query)
        except GraphQLError as exc:
            names: list[str] = []
            syntax_error: GraphQLError | None = exc
        else:
            syntax_error = None
            names = _operation_names(doc, op_name)

        effect, self.fault_rules = faults.decide(self.fault_rules, names, self.rng.random())
        if effect.latency_ms:
            await asyncio.sleep(effect.latency_ms / 1000)
        if effect.terminal is not None:
            return self._fault_response(request, effect.terminal)

        if not self._authorized(request):
            return lb_errors("Invalid API key", "AUTHENTICATION_ERROR", 401)
        if syntax_error is not None:
            return lb_errors(syntax_error.message, "GRAPHQL_PARSE_FAILED", 400)
        errors = self._validate(query, doc)
        if errors:
            return lb_errors(errors[0].message, "GRAPHQL_VALIDATION_FAILED", 400)

        ctx = RequestContext(origin=f"{request.scheme}://{request.host}")
        result = execute(
            self.schema,
            doc,
            root_value=self._resolvers.root_value(),
            context_value=ctx,
            variable_values=variables,
            operation_name=op_name,
        )
        if isinstance(result, Awaitable):
            result = await result
        assert isinstance(result, ExecutionResult)
        return self._result_response(result)

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and token.strip() in self.api_keys

    def _fault_response(self, request: web.Request, rule: faults.FaultRule) -> web.StreamResponse:
        if rule.kind == "http_error":
            return lb_errors(f"Injected fault: HTTP {rule.status}", "INTERNAL_SERVER_ERROR", rule.status)
        if rule.kind == "rate_limit":
            return _json({"message": faults.RATE_LIMIT_MESSAGE}, 429, headers={"Retry-After": str(rule.retry_after)})
        if rule.kind == "auth":
            return lb_errors("Invalid API key", "AUTHENTICATION_ERROR", 401)
        # reset: drop the connection without writing a response.
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError()

    @staticmethod
    def _result_response(result: ExecutionResult) -> web.Response:
        if not result.errors:
            return _json({"data": result.data})
        formatted = []
        status = 200
        for err in result.errors:
            f = err.formatted
            ext = dict(f.get("extensions") or {})
            if "code" not in ext:
                if err.path is None:
                    # Variable coercion / operation selection: a request problem.
                    ext["code"] = "GRAPHQL_VALIDATION_FAILED"
                    status = 400
                else:
                    log.error("resolver error: %s", err, exc_info=err.original_error)
                    ext["code"] = "INTERNAL_SERVER_ERROR"
            f["extensions"] = ext
            formatted.append(f)
        return _json({"errors": formatted, "data": result.data}, status)


def _operation_names(doc: DocumentNode, op_name: str | None) -> list[str]:
    """Operation name(s) and root field names, which fault rules may filter on."""
    names: list[str] = []
    for d in doc.definitions:
        if not isinstance(d, OperationDefinitionNode):
            continue
        name = d.name.value if d.name else None
        if op_name is not None and name != op_name:
            continue
        if name:
            names.append(name)
        for sel in d.selection_set.selections:
            field_name = getattr(getattr(sel, "name", None), "value", None)
            if isinstance(field_name, str):
                names.append(field_name)
    return names


async def serve_forever(server: LocalLabelbox) -> None:
    """Run until cancelled (CLI)."""
    async with server:
        log.info("local Labelbox API on %s (admin %s)", server.url, server.admin_url)
        print(f"local Labelbox API listening on {server.url} (admin: {server.admin_url})", flush=True)
        await asyncio.Event().wait()
