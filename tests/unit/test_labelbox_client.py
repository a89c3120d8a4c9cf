from __future__ import annotations

import orjson
import pytest

from service.labelbox import client as lb
from service.labelbox import errors as lb_errors
from service.labelbox import protocol as lb_protocol


def body(obj: object) -> bytes:
    return orjson.dumps(obj)


def gql_error(code: str, message: str = "m", status: int | None = None) -> bytes:
    ext: dict[str, object] = {"code": code}
    if status is not None:
        ext["exception"] = {"status": status, "message": message}
    return body({"errors": [{"message": message, "extensions": ext}], "data": None})


@pytest.mark.parametrize(
    ("status", "raw", "exc_type", "text"),
    [
        (503, b"upstream connect error or disconnect/reset before headers", lb_errors.InternalServerError,
         "Connection reset"),
        (502, b"<html>", lb_errors.InternalServerError, "502 Bad Gateway"),
        (500, b"oops", lb_errors.InternalServerError, "Internal server http error 500"),
        (200, b"not json", lb_errors.UnexpectedResponseError, "Failed to parse response as JSON"),
        (200, gql_error("AUTHENTICATION_ERROR"), lb_errors.AuthenticationError, "Invalid API key"),
        (200, gql_error("AUTHORIZATION_ERROR", "no access"), lb_errors.AuthorizationError, "no access"),
        (200, gql_error("GRAPHQL_VALIDATION_FAILED", "Query complexity limit exceeded"),
         lb_errors.ValidationFailedError, "complexity"),
        (400, gql_error("GRAPHQL_VALIDATION_FAILED", "Unknown arg"), lb_errors.InvalidQueryError, "Unknown arg"),
        (400, gql_error("GRAPHQL_PARSE_FAILED", "Syntax Error: x"), lb_errors.InvalidQueryError, "Syntax Error"),
        (429, body({"message": "You have exceeded your rate limit"}), lb_errors.RateLimitError, "You have exceeded"),
        (200, body({"message": "You have exceeded your rate limit"}), lb_errors.RateLimitError, "You have exceeded"),
        (200, gql_error("RESOURCE_NOT_FOUND", "no run"), lb_errors.ResourceNotFoundError, "no run"),
        (200, gql_error("RESOURCE_CONFLICT", "dup"), lb_errors.ResourceConflictError, "dup"),
        (200, gql_error("MALFORMED_REQUEST", "bad"), lb_errors.MalformedRequestError, "bad"),
        (200, gql_error("INTERNAL_SERVER_ERROR", "bad in", 400), lb_errors.InvalidQueryError, "bad in"),
        (200, gql_error("INTERNAL_SERVER_ERROR", "unproc", 422), lb_errors.UnprocessableEntityError, "unproc"),
        (200, gql_error("INTERNAL_SERVER_ERROR", "LBU limit", 426), lb_errors.OperationNotAllowedError, "LBU"),
        (200, gql_error("INTERNAL_SERVER_ERROR", "boom"), lb_errors.SuspectServerError, "boom"),
        (200, gql_error("INTERNAL_SERVER_ERROR", "teapot", 418), lb_errors.InternalServerError, "teapot"),
        (200, gql_error("OPERATION_NOT_ALLOWED", "no"), lb_errors.OperationNotAllowedError, "no"),
        (200, gql_error("SOMETHING_ELSE", "what"), lb_errors.UnexpectedResponseError, "Unknown error"),
        (401, body({"message": "API access disabled"}), lb_errors.AuthenticationError, "401"),
        (403, b"forbidden", lb_errors.AuthorizationError, "403"),
        (429, body({"message": "slow down"}), lb_errors.RateLimitError, "429"),
        (429, b"too many", lb_errors.RateLimitError, "429"),
        (404, body({"message": "nope"}), lb_errors.UnexpectedResponseError, "404"),
    ],
)
def test_error_mapping(status: int, raw: bytes, exc_type: type[Exception], text: str) -> None:
    with pytest.raises(exc_type) as info:
        lb_protocol.map_response(status, raw, {})
    assert type(info.value) is exc_type
    assert text in str(info.value)


def test_auth_wins_over_other_codes_regardless_of_position() -> None:
    raw = body({"errors": [
        {"message": "x", "extensions": {"code": "RESOURCE_NOT_FOUND"}},
        {"message": "y", "extensions": {"code": "AUTHENTICATION_ERROR"}},
    ]})
    with pytest.raises(lb_errors.AuthenticationError):
        lb_protocol.map_response(200, raw)


def test_success_returns_data() -> None:
    assert lb_protocol.map_response(200, body({"data": {"x": "t1"}})) == {"x": "t1"}


def test_retry_after_header() -> None:
    with pytest.raises(lb_errors.RateLimitError) as info:
        lb_protocol.map_response(429, body({"message": "You have exceeded"}), {"Retry-After": "3"})
    assert info.value.retry_after == 3.0
    assert lb_protocol.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert lb_protocol.parse_retry_after("garbage") is None
    assert lb_protocol.parse_retry_after(None) is None


def test_multipart_parts_match_the_sdk() -> None:
    payload = b'{"a": 1}\n{"b": 2}'
    parts = lb_protocol.multipart_parts("MR1", "n1", payload)
    assert [p[0] for p in parts] == ["operations", "map", "MR1__n1.ndjson"]
    ops = orjson.loads(parts[0][3])
    assert ops["variables"] == {"file": None, "contentLength": len(payload), "modelRunId": "MR1", "name": "n1"}
    assert ops["query"].startswith("mutation createMEAPredictionImportByFilePyApi(")
    assert "errorFileUrl inputFileUrl modelRunId name progress state statusFileUrl id" in ops["query"]
    assert orjson.loads(parts[1][3]) == {"MR1__n1.ndjson": ["variables.file"]}
    assert parts[2][1] == "MR1__n1.ndjson" and parts[2][2] == "application/x-ndjson"
    assert parts[2][3] == payload
    assert lb_protocol.ndjson_bytes([b"{}", b"{}"]) == b"{}\n{}"


def test_status_file_parsing() -> None:
    raw = (b'{"uuid": "u1", "dataRow": {"id": "d1"}, "status": "SUCCESS"}\n\n'
           b'{"uuid": "u2", "dataRow": {"id": "d2"}, "status": "FAILURE", '
           b'"errors": [{"name": "DataRowNotFound", "message": "Data row d2 not in model run"}]}\n')
    rows = lb_protocol.parse_status_file(raw)
    assert [(r.uuid, r.status) for r in rows] == [("u1", "SUCCESS"), ("u2", "FAILURE")]
    assert rows[1].errors == ("Data row d2 not in model run",)


def test_operations_are_verbatim() -> None:
    assert "createMEAModelRunLabelRegistrationTask(where : { id : $modelRunId}, data : {labelIds: $labelIds})}" \
        in lb_protocol.Q_LABEL_IDS
    assert "where : { modelRunId : $modelRunId, projectId: $projectId})}" in lb_protocol.Q_PROJECT
    assert "data : {dataRowIds: $dataRowIds, globalKeys: $globalKeys})}" in lb_protocol.Q_DATA_ROWS
    assert "modelErrorAnalysisPredictionImport(\n                where: {modelRunId: $modelRunId, name: $name})" \
        in lb_protocol.Q_GET_IMPORT


def test_client_repr_and_errors_hide_the_key() -> None:
    secret = "sk-very-secret-123"
    client = lb.LabelboxClient("http://127.0.0.1:9/graphql", secret)
    assert secret not in repr(client)
    headers = client._headers("ModelRun:upsert_labels", json_body=True)
    assert headers["Authorization"] == f"Bearer {secret}"
    assert headers["X-SDK-Method"] == "ModelRun:upsert_labels"
    assert headers["X-User-Agent"].startswith("python-sdk ")
    assert headers["Content-Type"] == "application/json"
    mp = client._headers(":create_from_objects", json_body=False)
    assert "Content-Type" not in mp and "Accept" not in mp


def test_parse_status_file_failures_only() -> None:
    ok = b'{"uuid": "u1", "status": "SUCCESS"}\n{"uuid": "u2", "status": "SUCCESS"}\n'
    assert lb_protocol.parse_status_file(ok, failures_only=True) == []
    assert len(lb_protocol.parse_status_file(ok)) == 2
    bad = ok + b'{"uuid": "u3", "status": "FAILURE", "errors": [{"message": "nope"}]}\n'
    rows = lb_protocol.parse_status_file(bad, failures_only=True)
    assert [(r.uuid, r.status, r.errors) for r in rows] == [("u3", "FAILURE", ("nope",))]
