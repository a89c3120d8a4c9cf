"""GraphQL root resolvers for the local Labelbox API.

Resolvers only translate between GraphQL arguments/results and the store (via the
``Backend`` the server passes in); Labelbox error codes are raised as GraphQLError
extensions so the SDK maps them to the same exceptions it raises against Labelbox.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from graphql import GraphQLError, GraphQLResolveInfo

from devstack.local_labelbox.cursors import InvalidCursorError, decode_cursor, end_cursor
from devstack.local_labelbox.store import ImportRecord, Store

T = TypeVar("T")

MAX_PAGE_SIZE = 1000


class UploadedFile:
    """The bytes of a multipart file part, substituted for the ``Upload`` variable."""

    def __init__(self, filename: str, content: bytes) -> None:
        self.filename = filename
        self.content = content


class Backend(Protocol):
    """What resolvers need from the server shell."""

    def db(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]: ...

    @property
    def store(self) -> Store: ...

    async def start_import(
        self, model_run_id: str, name: str, source: str, file_url: str | None, payload: bytes | None
    ) -> ImportRecord | None: ...


@dataclass(frozen=True)
class RequestContext:
    """Per-request data: the origin used to build absolute file URLs."""

    origin: str


def lb_error(message: str, code: str, status: int | None = None) -> GraphQLError:
    ext: dict[str, Any] = {"code": code}
    if status is not None:
        ext["exception"] = {"status": status, "message": message, "response": message}
    return GraphQLError(message, extensions=ext)


def camel_keys(metadata: Any) -> Any:
    """A JSON object's top-level keys in camelCase (``batch_size`` -> ``batchSize``); other values as they are."""
    if not isinstance(metadata, dict):
        return metadata
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        head, *rest = key.split("_")
        out[head + "".join(p[:1].upper() + p[1:] for p in rest)] = value
    return out


def import_json(rec: ImportRecord, origin: str) -> dict[str, Any]:
    """The 8-field import object; status/error URLs appear only once FINISHED."""
    base = f"{origin}/files/imports/{rec.id}"
    done = rec.state == "FINISHED"
    return {
        "id": rec.id,
        "modelRunId": rec.model_run_id,
        "name": rec.name,
        "state": rec.state,
        "progress": rec.progress,
        "inputFileUrl": rec.file_url if rec.source == "url" else f"{base}/input.ndjson",
        "statusFileUrl": f"{base}/status.ndjson" if done else None,
        "errorFileUrl": f"{base}/errors.ndjson" if done else None,
    }


class Resolvers:
    def __init__(self, backend: Backend) -> None:
        self._b = backend

    def root_value(self) -> dict[str, Any]:
        return {
            "modelRun": self.model_run,
            "MEALabelRegistrationTaskStatus": self.label_task_status,
            "MEADataRowRegistrationTaskStatus": self.data_row_task_status,
            "modelErrorAnalysisPredictionImport": self.get_import,
            "annotationGroups": self.annotation_groups,
            "customMetadataOntology": self.custom_metadata_ontology,
            "createModelRun": self.create_model_run,
            "createMEAModelRunLabelRegistrationTask": self.register_labels,
            "createMEAModelRunProjectLabelRegistrationTask": self.register_project,
            "createMEAModelRunDataRowRegistrationTask": self.register_data_rows,
            "createModelErrorAnalysisPredictionImport": self.create_import,
            "createAssignDataRowsToDataSplitTask": self.assign_split,
            "assignDataRowsToDataSplitTaskStatus": self.split_task_status,
            "updateModelRunConfig": self.update_config,
            "resetModelRunConfig": self.reset_config,
            "deleteModelRunDataRows": self.delete_run_data_rows,
            "deleteModelRuns": self.delete_runs,
        }

    async def _require_run(self, run_id: str) -> dict[str, Any]:
        run = await self._b.db(self._b.store.get_model_run, run_id)
        if run is None:
            raise lb_error(f"Resource 'ModelRun' not found for params: {{'id': '{run_id}'}}", "RESOURCE_NOT_FOUND")
        return run

    async def model_run(self, info: GraphQLResolveInfo[Any], where: dict[str, Any]) -> dict[str, Any]:
        return await self._require_run(where["id"])

    async def _task_status(self, task_id: str, kind: str) -> dict[str, Any]:
        task = await self._b.db(self._b.store.get_task, task_id, kind)
        if task is None:
            raise lb_error(f"Task {task_id} not found", "RESOURCE_NOT_FOUND")
        return task

    async def label_task_status(self, info: GraphQLResolveInfo[Any], where: dict[str, Any]) -> dict[str, Any]:
        return await self._task_status(where["id"], "label")

    async def data_row_task_status(self, info: GraphQLResolveInfo[Any], where: dict[str, Any]) -> dict[str, Any]:
        return await self._task_status(where["id"], "data_row")

    async def get_import(self, info: GraphQLResolveInfo[Any], where: dict[str, Any]) -> dict[str, Any]:
        rec = await self._b.db(self._b.store.find_import, where["modelRunId"], where["name"])
        if rec is None:
            raise lb_error(
                f"Resource 'MEAPredictionImport' not found for params: {where}", "RESOURCE_NOT_FOUND"
            )
        ctx: RequestContext = info.context
        return import_json(rec, ctx.origin)

    async def annotation_groups(
        self, info: GraphQLResolveInfo[Any], where: dict[str, Any], after: str | None = None, first: int | None = None
    ) -> dict[str, Any]:
        run_id = where["modelRunId"]["id"]
        await self._require_run(run_id)
        try:
            after_seq = decode_cursor(after)
        except InvalidCursorError as exc:
            raise lb_error(str(exc), "INTERNAL_SERVER_ERROR", 400) from exc
        size = 100 if first is None else first
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise lb_error(f"first must be between 1 and {MAX_PAGE_SIZE}", "INTERNAL_SERVER_ERROR", 400)
        rows = await self._b.db(self._b.store.run_data_rows_page, run_id, after_seq, size + 1)
        has_more = len(rows) > size
        page = rows[:size]
        return {"nodes": page, "pageInfo": {"endCursor": end_cursor([r["seq"] for r in page], has_more)}}

    async def custom_metadata_ontology(self, info: GraphQLResolveInfo[Any]) -> list[dict[str, Any]]:
        return []

    async def create_model_run(self, info: GraphQLResolveInfo[Any], data: dict[str, Any]) -> dict[str, Any]:
        store = self._b.store
        # Labelbox stores the config's top-level keys camel-cased (batch_size -> batchSize).
        metadata = camel_keys(data.get("trainingMetadata"))
        return await self._b.db(
            lambda: store.create_model_run(name=data["name"], model_id=data["modelId"], training_metadata=metadata)
        )

    async def update_config(
        self, info: GraphQLResolveInfo[Any], modelRun: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        """Merges ``config`` into the run's training metadata (keys as given, not camel-cased)."""
        await self._require_run(modelRun["id"])
        config = data.get("config")
        if config is not None and not isinstance(config, dict):
            raise lb_error("config must be a JSON object", "INTERNAL_SERVER_ERROR", 400)
        return await self._b.db(self._b.store.update_training_metadata, modelRun["id"], config or {}, False)

    async def reset_config(self, info: GraphQLResolveInfo[Any], modelRun: dict[str, Any]) -> dict[str, Any]:
        await self._require_run(modelRun["id"])
        return await self._b.db(self._b.store.update_training_metadata, modelRun["id"], None, True)

    async def delete_run_data_rows(self, info: GraphQLResolveInfo[Any], where: dict[str, Any]) -> bool:
        await self._require_run(where["modelRunId"])
        await self._b.db(self._b.store.delete_run_data_rows, where["modelRunId"], where["dataRowIds"])
        return True

    async def delete_runs(self, info: GraphQLResolveInfo[Any], where: dict[str, Any]) -> bool:
        for run_id in where["ids"]:
            await self._require_run(run_id)
        await self._b.db(self._b.store.delete_model_runs, where["ids"])
        return True

    async def assign_split(
        self, info: GraphQLResolveInfo[Any], modelRun: dict[str, Any], data: dict[str, Any]
    ) -> str:
        await self._require_run(modelRun["id"])
        return await self._b.db(self._b.store.assign_split, modelRun["id"], data["assignments"])

    async def split_task_status(self, info: GraphQLResolveInfo[Any], where: dict[str, Any]) -> dict[str, Any]:
        return await self._task_status(where["id"], "split")

    async def register_labels(self, info: GraphQLResolveInfo[Any], where: dict[str, Any], data: dict[str, Any]) -> str:
        await self._require_run(where["id"])
        return await self._b.db(self._b.store.register_labels, where["id"], data["labelIds"])

    async def register_project(self, info: GraphQLResolveInfo[Any], where: dict[str, Any]) -> str:
        await self._require_run(where["modelRunId"])
        return await self._b.db(self._b.store.register_project, where["modelRunId"], where["projectId"])

    async def register_data_rows(
        self, info: GraphQLResolveInfo[Any], where: dict[str, Any], data: dict[str, Any]
    ) -> str:
        await self._require_run(where["id"])
        return await self._b.db(
            self._b.store.register_data_rows, where["id"], data.get("dataRowIds"), data.get("globalKeys")
        )

    async def create_import(self, info: GraphQLResolveInfo[Any], data: dict[str, Any]) -> dict[str, Any]:
        run_id, name = data["modelRunId"], data["name"]
        await self._require_run(run_id)
        file_url = data.get("fileUrl")
        payload = data.get("filePayload")
        if (file_url is None) == (payload is None):
            raise lb_error("Provide exactly one of fileUrl and filePayload", "INTERNAL_SERVER_ERROR", 400)
        if payload is not None:
            upload = payload.get("file")
            if not isinstance(upload, UploadedFile):
                raise lb_error(
                    "filePayload.file must be a multipart file part (see the GraphQL multipart request spec)",
                    "INTERNAL_SERVER_ERROR",
                    400,
                )
            rec = await self._b.start_import(run_id, name, "upload", None, upload.content)
        else:
            rec = await self._b.start_import(run_id, name, "url", file_url, None)
        if rec is None:
            raise lb_error(
                f"An import named {name!r} already exists in model run {run_id}", "RESOURCE_CONFLICT"
            )
        ctx: RequestContext = info.context
        return import_json(rec, ctx.origin)
