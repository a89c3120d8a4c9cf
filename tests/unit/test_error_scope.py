"""Scope of permanent Labelbox errors, on the texts Labelbox sends for the operations the
uploader uses (registrations, prediction import, import lookup, task status)."""

from __future__ import annotations

import orjson
import pytest

from service.labelbox import errors as lb
from service.labelbox.error_scope import Scope, scope_of
from service.labelbox.protocol import map_response
from service.labelbox.retry_policy import error_scope

MR = "ckz1q2w3e4r5t6y7"


@pytest.mark.parametrize(
    ("code", "message", "scope"),
    [
        # RESOURCE_NOT_FOUND of the mutations keyed by the model run (the local API's text, and the SDK's)
        ("RESOURCE_NOT_FOUND", f"Resource 'ModelRun' not found for params: {{'id': '{MR}'}}", Scope.RUN),
        ("RESOURCE_NOT_FOUND", "Resource 'ModelRun' not found for params: {'param_0': 'x'}", Scope.RUN),
        (None, f"Resource 'ModelRun' not found for params: {{'id': '{MR}'}}", Scope.RUN),
        # the client's own text when a run-keyed mutation returns no task id
        ("RESOURCE_NOT_FOUND",
         "createMEAModelRunDataRowRegistrationTask returned no task id (model run not found?)", Scope.RUN),
        # deleted run
        ("RESOURCE_NOT_FOUND", f"Model run {MR} has been deleted", Scope.RUN),
        ("OPERATION_NOT_ALLOWED", "Cannot add predictions: the model run was deleted", Scope.RUN),
        # no permission on the run
        ("AUTHORIZATION_ERROR", f"User does not have permission to access ModelRun {MR}", Scope.RUN),
        ("AUTHORIZATION_ERROR", f"You are not authorized to update model run {MR}", Scope.RUN),
        ("AUTHORIZATION_ERROR", f"Permission denied on {MR}", Scope.RUN),
        # not about the run
        ("RESOURCE_NOT_FOUND",
         f"Resource 'MEAPredictionImport' not found for params: {{'modelRunId': '{MR}', 'name': 'n'}}",
         Scope.PAYLOAD),
        ("RESOURCE_NOT_FOUND", "Task 7f1c not found", Scope.PAYLOAD),
        ("RESOURCE_NOT_FOUND", "MEADataRowRegistrationTaskStatus: task not found", Scope.PAYLOAD),
        (None, "data row registration failed: Data rows not found: dr-1, dr-2", Scope.PAYLOAD),
        (None, "label registration failed: Labels not found: no-such-label", Scope.PAYLOAD),
        ("AUTHORIZATION_ERROR", "You are not authorized to perform this action", Scope.PAYLOAD),
        ("OPERATION_NOT_ALLOWED", "LBU limit exceeded, upgrade to continue", Scope.PAYLOAD),
        ("RESOURCE_CONFLICT", f"An import named 'runstream-1' already exists in model run {MR}", Scope.PAYLOAD),
        (None, "prediction import 'runstream-1' ended FAILED", Scope.PAYLOAD),
        ("INTERNAL_SERVER_ERROR", "Provide exactly one of fileUrl and filePayload", Scope.PAYLOAD),
        (None, "", Scope.PAYLOAD),
    ],
)
def test_scope_of_labelbox_texts(code: str | None, message: str, scope: Scope) -> None:
    assert scope_of(code, message, model_run_id=MR) is scope


def test_the_run_id_alone_is_enough_for_permission_errors() -> None:
    assert scope_of("AUTHORIZATION_ERROR", f"Access denied to {MR}", model_run_id=MR) is Scope.RUN
    assert scope_of("AUTHORIZATION_ERROR", f"Access denied to {MR}", model_run_id="other") is Scope.PAYLOAD
    assert scope_of("AUTHORIZATION_ERROR", f"Access denied to {MR}") is Scope.PAYLOAD


def _graphql(code: str, message: str, status: int = 200) -> BaseException:
    body = orjson.dumps({"errors": [{"message": message, "extensions": {"code": code}}], "data": None})
    try:
        map_response(status, body, operation="createMEAModelRunDataRowRegistrationTask")
    except lb.LabelboxError as exc:
        return exc
    raise AssertionError("no error raised")


def test_error_scope_of_mapped_responses() -> None:
    not_found = _graphql("RESOURCE_NOT_FOUND", f"Resource 'ModelRun' not found for params: {{'id': '{MR}'}}")
    assert isinstance(not_found, lb.ResourceNotFoundError)
    assert error_scope(not_found, MR) is Scope.RUN
    denied = _graphql("AUTHORIZATION_ERROR", f"User does not have permission to access ModelRun {MR}")
    assert isinstance(denied, lb.AuthorizationError)
    assert error_scope(denied, MR) is Scope.RUN
    assert error_scope(_graphql("AUTHORIZATION_ERROR", "Forbidden"), MR) is Scope.PAYLOAD
    imp = _graphql("RESOURCE_NOT_FOUND", "Resource 'MEAPredictionImport' not found for params: {}")
    assert error_scope(imp, MR) is Scope.PAYLOAD
    assert error_scope(lb.TaskFailedError("data row registration failed: Data rows not found: x"), MR) \
        is Scope.PAYLOAD


def test_error_scope_is_none_for_transient_and_fatal_errors() -> None:
    assert error_scope(lb.RateLimitError("You have exceeded", status=429), MR) is None
    assert error_scope(lb.InternalServerError(f"ModelRun {MR} not found", status=503), MR) is None
    assert error_scope(lb.AuthenticationError("Invalid API key"), MR) is None
    assert error_scope(ValueError("Resource 'ModelRun' not found"), MR) is None
