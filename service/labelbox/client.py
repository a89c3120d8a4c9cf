"""Async Labelbox GraphQL client for the uploader (aiohttp): the I/O shell of service.labelbox.protocol.

Speaks exactly the operations the official SDK sends for ``ModelRun.upsert_labels``,
``ModelRun.upsert_data_rows`` and ``ModelRun.add_predictions`` (PROTOCOL §§1-3, 5): the
same query strings, variables, headers and multipart layout, so it works against Labelbox
and against the local Labelbox-compatible API. Differences from the SDK are deliberate:
every error is mapped to a specific exception type (PROTOCOL §5b) that the pure retry
policy classifies, rate limits are detected by status code and message, ``Retry-After``
is kept, and ``contentLength`` is the exact byte count.

With a ``limiter`` (service.labelbox.request_limiter) every GraphQL request waits for its turn in the
process's request budget, queued under its model run, and a rate-limit answer pauses the whole
budget for its ``Retry-After``; status files are signed URLs, fetched outside the budget.

The API key is only ever placed in the ``Authorization`` header; it is never part of an
exception, a log event or a metric label.
"""

from __future__ import annotations

import asyncio
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from service.labelbox.errors import (
    ImportFailedError,
    InternalServerError,
    NetworkError,
    RateLimitError,
    ResourceNotFoundError,
    TaskFailedError,
    TaskTimeoutError,
    UnexpectedResponseError,
)
from service.labelbox.protocol import (
    Q_DATA_ROW_STATUS,
    Q_DATA_ROWS,
    Q_GET_IMPORT,
    Q_LABEL_IDS,
    Q_LABEL_STATUS,
    Q_PROJECT,
    SDK_VERSION,
    ImportState,
    RowStatus,
    TaskStatus,
    map_response,
    multipart_parts,
    parse_status_file,
)
from service.labelbox.request_limiter import RequestLimiter


@dataclass(frozen=True)
class PollPolicy:
    """Backoff for task and import polling: start, multiply, cap, overall deadline."""

    initial_s: float = 0.1
    multiplier: float = 1.6
    max_s: float = 5.0
    deadline_s: float = 900.0


# The pause of the whole process after a rate-limit answer without a usable Retry-After.
DEFAULT_RATE_LIMIT_PAUSE_S = 1.0

RequestHook = Callable[[str, int | None, float], None]  # (operation, status or None on network error, seconds)


class LabelboxClient:
    """One aiohttp session against one GraphQL endpoint; safe for concurrent use."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        request_timeout_s: float = 60.0,
        poll: PollPolicy | None = None,
        on_request: RequestHook | None = None,
        connector_limit: int = 32,
        limiter: RequestLimiter | None = None,
    ) -> None:
        self._url = url
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._poll = poll or PollPolicy()
        self._on_request = on_request
        self._connector_limit = connector_limit
        self.limiter = limiter  # the process's request budget: every GraphQL request waits for its turn
        self._session: aiohttp.ClientSession | None = None
        vi = sys.version_info
        self._base_headers = {
            "X-User-Agent": f"python-sdk {SDK_VERSION}",
            "X-Python-Version": f"{vi.major}.{vi.minor}.{vi.micro}-{vi.releaselevel}",
            "User-Agent": f"runstream/0.1.0 ({platform.system()})",
        }

    def __repr__(self) -> str:  # never show the key
        return f"LabelboxClient(url={self._url!r})"

    @property
    def url(self) -> str:
        return self._url

    async def __aenter__(self) -> LabelboxClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(limit=self._connector_limit)
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, sdk_method: str, *, json_body: bool) -> dict[str, str]:
        h = dict(self._base_headers)
        h["Authorization"] = f"Bearer {self._api_key}"
        h["X-SDK-Method"] = sdk_method
        if json_body:
            h["Accept"] = "application/json"
            h["Content-Type"] = "application/json"
        return h

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("LabelboxClient used before start()")
        return self._session

    async def _post(self, operation: str, sdk_method: str, make_body: Callable[[], Any], json_body: bool,
                    key: str = "") -> Any:
        """One GraphQL request; ``key`` (the model run) is its queue in the fair request budget."""
        if self.limiter is None:
            return await self._post_now(operation, sdk_method, make_body, json_body)
        async with self.limiter.slot(key):
            try:
                return await self._post_now(operation, sdk_method, make_body, json_body)
            except RateLimitError as exc:
                # The budget is the organisation's: every run waits, not only this request.
                self.limiter.pause(exc.retry_after if exc.retry_after is not None else DEFAULT_RATE_LIMIT_PAUSE_S)
                raise

    async def _post_now(self, operation: str, sdk_method: str, make_body: Callable[[], Any],
                        json_body: bool) -> Any:
        started = time.monotonic()
        status: int | None = None
        try:
            async with self._sess().post(
                self._url, data=make_body(), headers=self._headers(sdk_method, json_body=json_body)
            ) as resp:
                status = resp.status
                body = await resp.read()
                resp_headers = {k: v for k, v in resp.headers.items() if k.lower() == "retry-after"}
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # Re-raised without chaining: aiohttp exceptions can carry request headers.
            raise NetworkError(f"{type(exc).__name__}: {_safe(str(exc), self._api_key)}",
                               operation=operation) from None
        finally:
            if self._on_request is not None:
                self._on_request(operation, status, time.monotonic() - started)
        return map_response(status, body, resp_headers, operation=operation)

    async def execute(self, query: str, variables: Mapping[str, Any] | None, *, operation: str,
                      sdk_method: str, key: str = "") -> Any:
        """POST one GraphQL JSON request; returns ``data`` or raises a LabelboxError."""
        payload = orjson.dumps({"query": query, "variables": variables})
        return await self._post(operation, sdk_method, lambda: payload, json_body=True, key=key)

    # --- registrations (PROTOCOL §§1, 3) ---

    async def create_label_registration(self, model_run_id: str, label_ids: list[str]) -> str:
        data = await self.execute(Q_LABEL_IDS, {"modelRunId": model_run_id, "labelIds": label_ids},
                                  operation="createMEAModelRunLabelRegistrationTask",
                                  sdk_method="ModelRun:upsert_labels", key=model_run_id)
        return _task_id(data, "createMEAModelRunLabelRegistrationTask")

    async def create_project_label_registration(self, model_run_id: str, project_id: str) -> str:
        data = await self.execute(Q_PROJECT, {"modelRunId": model_run_id, "projectId": project_id},
                                  operation="createMEAModelRunProjectLabelRegistrationTask",
                                  sdk_method="ModelRun:upsert_labels", key=model_run_id)
        return _task_id(data, "createMEAModelRunProjectLabelRegistrationTask")

    async def create_data_row_registration(self, model_run_id: str, data_row_ids: list[str] | None,
                                           global_keys: list[str] | None) -> str:
        data = await self.execute(
            Q_DATA_ROWS,
            {"modelRunId": model_run_id, "dataRowIds": data_row_ids, "globalKeys": global_keys},
            operation="createMEAModelRunDataRowRegistrationTask", sdk_method="ModelRun:upsert_data_rows",
            key=model_run_id,
        )
        return _task_id(data, "createMEAModelRunDataRowRegistrationTask")

    async def label_task_status(self, task_id: str, *, model_run_id: str = "") -> TaskStatus:
        data = await self.execute(Q_LABEL_STATUS, {"where": {"id": task_id}},
                                  operation="MEALabelRegistrationTaskStatus", sdk_method="ModelRun:upsert_labels",
                                  key=model_run_id)
        return _task_status(data, "MEALabelRegistrationTaskStatus")

    async def data_row_task_status(self, task_id: str, *, model_run_id: str = "") -> TaskStatus:
        data = await self.execute(Q_DATA_ROW_STATUS, {"where": {"id": task_id}},
                                  operation="MEADataRowRegistrationTaskStatus",
                                  sdk_method="ModelRun:upsert_data_rows", key=model_run_id)
        return _task_status(data, "MEADataRowRegistrationTaskStatus")

    async def wait_task(self, status_fn: Callable[[], Awaitable[TaskStatus]], what: str) -> None:
        """Poll immediately, then with backoff, until COMPLETE; FAILED raises TaskFailedError."""
        async def once() -> bool:
            st = await status_fn()
            if st.status == "COMPLETE":
                return True
            if st.status == "FAILED":
                raise TaskFailedError(f"{what} failed: {st.error_message or 'Job failed.'}", operation=what)
            return False

        await self._poll_until(once, what)

    async def _poll_until(self, once: Callable[[], Awaitable[bool]], what: str) -> None:
        deadline = time.monotonic() + self._poll.deadline_s
        delay = self._poll.initial_s
        while True:
            if await once():
                return
            if time.monotonic() + delay > deadline:
                raise TaskTimeoutError(f"{what} not finished within {self._poll.deadline_s:g} s", operation=what)
            await asyncio.sleep(delay)
            delay = min(self._poll.max_s, delay * self._poll.multiplier)

    async def register_labels(self, model_run_id: str, label_ids: list[str]) -> None:
        task = await self.create_label_registration(model_run_id, label_ids)
        await self.wait_task(lambda: self.label_task_status(task, model_run_id=model_run_id), "label registration")

    async def register_project_labels(self, model_run_id: str, project_id: str) -> None:
        task = await self.create_project_label_registration(model_run_id, project_id)
        await self.wait_task(lambda: self.label_task_status(task, model_run_id=model_run_id),
                             "project label registration")

    async def register_data_rows(self, model_run_id: str, data_row_ids: list[str] | None,
                                 global_keys: list[str] | None) -> None:
        task = await self.create_data_row_registration(model_run_id, data_row_ids, global_keys)
        await self.wait_task(lambda: self.data_row_task_status(task, model_run_id=model_run_id),
                             "data row registration")

    # --- prediction import (PROTOCOL §2) ---

    async def create_prediction_import(self, model_run_id: str, name: str, payload: bytes) -> ImportState:
        """The multipart upload of ``createMEAPredictionImportByFilePyApi``."""
        if not payload:
            raise UnexpectedResponseError("annotations cannot be empty", operation="createPredictionImport")
        parts = multipart_parts(model_run_id, name, payload)

        def body() -> aiohttp.MultipartWriter:
            writer = aiohttp.MultipartWriter("form-data")
            for field, filename, ctype, data in parts:
                part = writer.append(data, {"Content-Type": ctype})
                if filename:
                    part.set_content_disposition("form-data", name=field, filename=filename)
                else:
                    part.set_content_disposition("form-data", name=field)
            return writer

        data = await self._post("createModelErrorAnalysisPredictionImport", ":create_from_objects", body,
                                json_body=False, key=model_run_id)
        obj = (data or {}).get("createModelErrorAnalysisPredictionImport")
        if not isinstance(obj, dict):
            raise UnexpectedResponseError("import creation returned no import", operation="createPredictionImport")
        return ImportState.from_json(obj)

    async def get_prediction_import(self, model_run_id: str, name: str) -> ImportState:
        data = await self.execute(Q_GET_IMPORT, {"modelRunId": model_run_id, "name": name},
                                  operation="modelErrorAnalysisPredictionImport",
                                  sdk_method="MEAPredictionImport:refresh", key=model_run_id)
        obj = (data or {}).get("modelErrorAnalysisPredictionImport")
        if not isinstance(obj, dict):
            raise ResourceNotFoundError(f"prediction import {name!r} not found",
                                        operation="modelErrorAnalysisPredictionImport")
        return ImportState.from_json(obj)

    async def wait_import(self, model_run_id: str, name: str, *, first: ImportState | None = None) -> ImportState:
        """Poll by (model run, name) with backoff until FINISHED; FAILED raises ImportFailedError."""
        result: list[ImportState] = [first] if first is not None and first.state != "RUNNING" else []

        async def once() -> bool:
            st = result.pop() if result else await self.get_prediction_import(model_run_id, name)
            result.append(st)
            if st.state == "FINISHED":
                return True
            if st.state == "FAILED":
                raise ImportFailedError(f"prediction import {name!r} ended FAILED", operation="import")
            result.clear()
            return False

        await self._poll_until(once, f"prediction import {name!r}")
        return result[-1]

    async def fetch_file(self, url: str) -> bytes:
        """Status and error files are signed URLs: fetched without the Authorization header."""
        started = time.monotonic()
        status: int | None = None
        try:
            async with self._sess().get(url) as resp:
                status = resp.status
                body = await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise NetworkError(f"{type(exc).__name__} fetching status file", operation="fetchFile") from None
        finally:
            if self._on_request is not None:
                self._on_request("fetchFile", status, time.monotonic() - started)
        if status >= 500 or status in (408, 429):
            raise InternalServerError(f"status file fetch: HTTP {status}", status=status, operation="fetchFile")
        if status >= 400:
            raise UnexpectedResponseError(f"status file fetch: HTTP {status}", status=status,
                                          operation="fetchFile")
        return body

    async def import_statuses(self, state: ImportState, *, failures_only: bool = False) -> list[RowStatus]:
        if not state.status_file_url:
            return []
        return parse_status_file(await self.fetch_file(state.status_file_url), failures_only=failures_only)


def _safe(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def _task_id(data: Any, field: str) -> str:
    if not isinstance(data, dict) or not data.get(field):
        raise ResourceNotFoundError(f"{field} returned no task id (model run not found?)", operation=field)
    return str(data[field])


def _task_status(data: Any, field: str) -> TaskStatus:
    obj = data.get(field) if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        raise ResourceNotFoundError(f"{field}: task not found", operation=field)
    return TaskStatus(status=str(obj.get("status")), error_message=obj.get("errorMessage"))


__all__ = ["DEFAULT_RATE_LIMIT_PAUSE_S", "LabelboxClient", "PollPolicy", "RequestHook"]
