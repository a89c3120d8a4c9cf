# ruff: noqa: E501  (GraphQL operations are kept verbatim, as the SDK sends them)
"""Pure: the Labelbox wire protocol the client speaks (PROTOCOL §§1-5), no I/O.

The operations verbatim as the SDK sends them, the multipart layout of a prediction import, the
import, task and status-file records, and ``map_response``: an HTTP answer into its ``data`` or the
exception of PROTOCOL §5b that the retry policy classifies. The aiohttp shell that sends these is
``service.labelbox.client``.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from service.labelbox.errors import (
    AuthenticationError,
    AuthorizationError,
    InternalServerError,
    InvalidQueryError,
    MalformedRequestError,
    NetworkError,
    OperationNotAllowedError,
    RateLimitError,
    ResourceConflictError,
    ResourceNotFoundError,
    SuspectServerError,
    UnexpectedResponseError,
    UnprocessableEntityError,
    ValidationFailedError,
)

SDK_VERSION = "7.17.0"
NDJSON_MIME_TYPE = "application/x-ndjson"

# ---------------------------------------------------------------------------------------
# Operations, verbatim from the SDK (PROTOCOL §§1-3).

IMPORT_FIELDS = "errorFileUrl inputFileUrl modelRunId name progress state statusFileUrl id"

Q_LABEL_IDS = """mutation createMEAModelRunLabelRegistrationTaskPyApi($modelRunId: ID!, $labelIds : [ID!]!) {
        createMEAModelRunLabelRegistrationTask(where : { id : $modelRunId}, data : {labelIds: $labelIds})}
        """
Q_PROJECT = """mutation createMEAModelRunProjectLabelRegistrationTaskPyApi($modelRunId: ID!, $projectId : ID!) {
        createMEAModelRunProjectLabelRegistrationTask(where : { modelRunId : $modelRunId, projectId: $projectId})}
        """
Q_LABEL_STATUS = """query MEALabelRegistrationTaskStatusPyApi($where: WhereUniqueIdInput!){
            MEALabelRegistrationTaskStatus(where: $where) {status errorMessage}
        }
        """
Q_DATA_ROWS = """mutation createMEAModelRunDataRowRegistrationTaskPyApi($modelRunId: ID!, $dataRowIds: [ID!], $globalKeys: [ID!]) {
          createMEAModelRunDataRowRegistrationTask(where : { id : $modelRunId}, data : {dataRowIds: $dataRowIds, globalKeys: $globalKeys})}
          """
Q_DATA_ROW_STATUS = """query MEADataRowRegistrationTaskStatusPyApi($where: WhereUniqueIdInput!){
            MEADataRowRegistrationTaskStatus(where: $where) {status errorMessage}
        }
        """
Q_CREATE_IMPORT = f"""mutation createMEAPredictionImportByFilePyApi($modelRunId : ID!, $name: String!, $file: Upload!, $contentLength: Int!) {{
            createModelErrorAnalysisPredictionImport(data: {{
                modelRunId: $modelRunId name: $name filePayload: {{ file: $file, contentLength: $contentLength}}
        }}) {{{IMPORT_FIELDS}}}
        }}"""
Q_GET_IMPORT = f"""query getModelErrorAnalysisPredictionImportPyApi($modelRunId : ID!, $name: String!) {{
            modelErrorAnalysisPredictionImport(
                where: {{modelRunId: $modelRunId, name: $name}}){{
                    {IMPORT_FIELDS}
                }}}}"""


# ---------------------------------------------------------------------------------------
# Pure helpers.


@dataclass(frozen=True)
class ImportState:
    """The eight fields of an MEAPredictionImport (PROTOCOL §2d)."""

    id: str
    name: str
    model_run_id: str
    state: str  # RUNNING | FINISHED | FAILED
    progress: str | None
    input_file_url: str | None
    error_file_url: str | None
    status_file_url: str | None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ImportState:
        return cls(
            id=str(obj["id"]),
            name=str(obj["name"]),
            model_run_id=str(obj["modelRunId"]),
            state=str(obj["state"]),
            progress=obj.get("progress"),
            input_file_url=obj.get("inputFileUrl"),
            error_file_url=obj.get("errorFileUrl"),
            status_file_url=obj.get("statusFileUrl"),
        )


@dataclass(frozen=True)
class RowStatus:
    """One line of an import's status file."""

    uuid: str
    status: str  # SUCCESS | FAILURE
    data_row: Mapping[str, Any]
    errors: tuple[str, ...]


@dataclass(frozen=True)
class TaskStatus:
    status: str
    error_message: str | None


def file_name(model_run_id: str, name: str) -> str:
    """The multipart field name and filename the SDK uses."""
    return f"{model_run_id}__{name}.ndjson"


def ndjson_bytes(rows: list[bytes]) -> bytes:
    """Join already-serialised rows with newlines, no trailing newline (as the SDK does)."""
    return b"\n".join(rows)


def multipart_parts(model_run_id: str, name: str, payload: bytes) -> list[tuple[str, str | None, str, bytes]]:
    """The three multipart parts in SDK order: (field name, filename, content type, body)."""
    fname = file_name(model_run_id, name)
    operations = {
        "variables": {"file": None, "contentLength": len(payload), "modelRunId": model_run_id, "name": name},
        "query": Q_CREATE_IMPORT,
    }
    return [
        ("operations", None, "application/json", orjson.dumps(operations)),
        ("map", None, "application/json", orjson.dumps({fname: ["variables.file"]})),
        (fname, fname, NDJSON_MIME_TYPE, payload),
    ]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def parse_status_file(body: bytes, *, failures_only: bool = False) -> list[RowStatus]:
    """Parse an NDJSON status (or error) file; blank lines are skipped.

    ``failures_only`` skips lines that cannot be FAILURE rows without decoding them: a
    status file has one line per imported row, and only the failures need attention.
    """
    out: list[RowStatus] = []
    if failures_only and b"FAILURE" not in body:
        return out  # the common case: one scan of the whole file instead of one per line
    for line in body.splitlines():
        if not line.strip() or (failures_only and b"FAILURE" not in line):
            continue
        obj = orjson.loads(line)
        errors = tuple(
            str(e.get("message") or e.get("name") or e) if isinstance(e, dict) else str(e)
            for e in (obj.get("errors") or [])
        )
        out.append(
            RowStatus(
                uuid=str(obj.get("uuid")),
                status=str(obj.get("status", "")),
                data_row=obj.get("dataRow") or {},
                errors=errors,
            )
        )
    return out


def _error_code(err: Any) -> str | None:
    if isinstance(err, dict):
        ext = err.get("extensions")
        if isinstance(ext, dict):
            code = ext.get("code")
            return str(code) if code is not None else None
    return None


def map_response(
    status: int,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    operation: str | None = None,
) -> Any:
    """Turn an HTTP response into ``data`` or raise the exception of PROTOCOL §5b.

    Checked in the SDK's order; additionally 429/408 are transient and 401/403 fatal
    whatever the body says, because that is what those statuses mean.
    """
    headers = headers or {}
    retry_after = parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"))
    text = body[:500].decode("utf-8", "replace")
    if 500 <= status <= 599:
        if "upstream connect error or disconnect/reset before headers" in text:
            raise InternalServerError("Connection reset", status=status, operation=operation)
        if status == 502:
            raise InternalServerError("502 Bad Gateway", status=status, operation=operation)
        err = InternalServerError(f"Internal server http error {status}", status=status, operation=operation)
        err.retry_after = retry_after
        raise err
    try:
        r_json = orjson.loads(body)
    except orjson.JSONDecodeError:
        r_json = None
    if not isinstance(r_json, dict):
        if status == 429:
            raise RateLimitError(f"429 {text}".strip(), status=status, retry_after=retry_after, operation=operation)
        if status == 401:
            raise AuthenticationError("401 Unauthorized", status=status, operation=operation)
        if status == 403:
            raise AuthorizationError("403 Forbidden", status=status, operation=operation)
        if status == 408:
            raise NetworkError("408 Request Timeout", status=status, operation=operation)
        raise UnexpectedResponseError(f"Failed to parse response as JSON: {text}", status=status,
                                      operation=operation)
    errors = r_json.get("errors") or []
    if not isinstance(errors, list):
        errors = [errors]

    def first(code: str) -> dict[str, Any] | None:
        for e in errors:
            if _error_code(e) == code:
                return e if isinstance(e, dict) else None
        return None

    def msg(e: dict[str, Any] | None) -> str:
        return str((e or {}).get("message", ""))

    if first("AUTHENTICATION_ERROR") is not None:
        raise AuthenticationError("Invalid API key", status=status, operation=operation)
    if (e := first("AUTHORIZATION_ERROR")) is not None:
        raise AuthorizationError(msg(e), status=status, operation=operation)
    if (e := first("GRAPHQL_VALIDATION_FAILED")) is not None:
        if msg(e) == "Query complexity limit exceeded":
            raise ValidationFailedError(msg(e), status=status, operation=operation)
        raise InvalidQueryError(msg(e), status=status, operation=operation)
    if (e := first("GRAPHQL_PARSE_FAILED")) is not None:
        raise InvalidQueryError(msg(e), status=status, operation=operation)
    top_message = r_json.get("message")
    if isinstance(top_message, str) and top_message.startswith("You have exceeded"):
        raise RateLimitError(top_message, status=status, retry_after=retry_after, operation=operation)
    if (e := first("RESOURCE_NOT_FOUND")) is not None:
        raise ResourceNotFoundError(msg(e) or "resource not found", status=status, operation=operation)
    if (e := first("RESOURCE_CONFLICT")) is not None:
        raise ResourceConflictError(msg(e), status=status, operation=operation)
    if (e := first("MALFORMED_REQUEST")) is not None:
        raise MalformedRequestError(msg(e), status=status, operation=operation)
    if (e := first("INTERNAL_SERVER_ERROR")) is not None:
        exc_info = (e.get("extensions") or {}).get("exception") or {}
        inner = exc_info.get("status") if isinstance(exc_info, dict) else None
        inner = 500 if inner is None else inner
        if inner == 400:
            raise InvalidQueryError(msg(e), status=status, operation=operation)
        if inner == 422:
            raise UnprocessableEntityError(msg(e), status=status, operation=operation)
        if inner == 426:
            raise OperationNotAllowedError(msg(e), status=status, operation=operation)
        if inner == 500:
            raise SuspectServerError(msg(e), status=status, operation=operation)
        raise InternalServerError(msg(e), status=status, operation=operation)
    if (e := first("OPERATION_NOT_ALLOWED")) is not None:
        raise OperationNotAllowedError(msg(e), status=status, operation=operation)
    if errors:
        summary = [{"message": msg(x if isinstance(x, dict) else None), "code": _error_code(x)} for x in errors]
        raise UnexpectedResponseError(f"Unknown error: {summary}", status=status, operation=operation)
    if status == 429:
        raise RateLimitError(f"429 {top_message or 'Too Many Requests'}", status=status,
                             retry_after=retry_after, operation=operation)
    if status == 408:
        raise NetworkError("408 Request Timeout", status=status, operation=operation)
    if status == 401:
        raise AuthenticationError(f"401 {top_message or 'Unauthorized'}", status=status, operation=operation)
    if status == 403:
        raise AuthorizationError(f"403 {top_message or 'Forbidden'}", status=status, operation=operation)
    if status != 200:
        raise UnexpectedResponseError(f"{status} {top_message or ''}".strip(), status=status,
                                      operation=operation)
    return r_json.get("data")


# ---------------------------------------------------------------------------------------
# The client.
