"""Labelbox API failures, grouped by what the retry policy does with them (PROTOCOL §5b).

Pure: the HTTP client (service/labelbox/client.py) raises these, the retry policy
(service/labelbox/retry_policy.py) and the error scope (service/labelbox/error_scope.py) classify them, and
neither of those needs the HTTP library to do it.
"""

from __future__ import annotations

from service.errors import RunstreamError


class LabelboxError(RunstreamError):
    """Base of every Labelbox API failure; ``status`` is the HTTP status when known."""

    def __init__(self, message: str, *, status: int | None = None, operation: str | None = None) -> None:
        self.message = message
        self.status = status
        self.operation = operation
        super().__init__(message if operation is None else f"{operation}: {message}")


class LabelboxTransientError(LabelboxError):
    """Worth retrying: the same request may succeed later."""

    retry_after: float | None = None
    max_attempts: int | None = None  # a cap of its own (None: the global policy decides)


class InternalServerError(LabelboxTransientError):
    """HTTP 5xx, or a GraphQL INTERNAL_SERVER_ERROR that is not a client mistake."""


class SuspectServerError(InternalServerError):
    """A server error that may be caused by the payload (GraphQL 500): retried a few times, then bisected."""

    max_attempts = 4


class RateLimitError(LabelboxTransientError):
    """HTTP 429 or the "You have exceeded ..." message (SDK: ApiLimitError)."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None,
                 operation: str | None = None) -> None:
        super().__init__(message, status=status, operation=operation)
        self.retry_after = retry_after


class NetworkError(LabelboxTransientError):
    """Connection refused/reset, DNS failure, or a request timeout."""


class TaskTimeoutError(LabelboxTransientError):
    """A registration task or an import did not reach a final state within its deadline."""


class ImportFailedError(LabelboxTransientError):
    """A prediction import ended in state FAILED; re-importing usually works, a few times at most."""

    max_attempts = 4


class LabelboxFatalError(LabelboxError):
    """The pipeline cannot work at all (credentials): stop, commit nothing, DLQ nothing."""


class AuthenticationError(LabelboxFatalError):
    """AUTHENTICATION_ERROR or HTTP 401: the API key is missing, wrong or revoked."""


class AuthorizationError(LabelboxFatalError):
    """AUTHORIZATION_ERROR or HTTP 403: the key may not do this."""


class LabelboxPermanentError(LabelboxError):
    """The request itself is wrong; retrying the same payload cannot help."""


class InvalidQueryError(LabelboxPermanentError):
    """GRAPHQL_VALIDATION_FAILED / GRAPHQL_PARSE_FAILED / INTERNAL_SERVER_ERROR with status 400."""


class ValidationFailedError(LabelboxPermanentError):
    """GRAPHQL_VALIDATION_FAILED with "Query complexity limit exceeded"."""


class UnprocessableEntityError(LabelboxPermanentError):
    """INTERNAL_SERVER_ERROR with status 422."""


class OperationNotAllowedError(LabelboxPermanentError):
    """OPERATION_NOT_ALLOWED, or INTERNAL_SERVER_ERROR with status 426 (e.g. LBU limit)."""


class ResourceNotFoundError(LabelboxPermanentError):
    """RESOURCE_NOT_FOUND (the SDK returns None here; we name it)."""


class ResourceConflictError(LabelboxPermanentError):
    """RESOURCE_CONFLICT."""


class MalformedRequestError(LabelboxPermanentError):
    """MALFORMED_REQUEST."""


class TaskFailedError(LabelboxPermanentError):
    """A label or data-row registration task ended FAILED (errorMessage kept)."""


class UnexpectedResponseError(LabelboxPermanentError):
    """Non-JSON body, unknown error code, or a 4xx without GraphQL errors."""


__all__ = [
    "AuthenticationError",
    "AuthorizationError",
    "ImportFailedError",
    "InternalServerError",
    "InvalidQueryError",
    "LabelboxError",
    "LabelboxFatalError",
    "LabelboxPermanentError",
    "LabelboxTransientError",
    "MalformedRequestError",
    "NetworkError",
    "OperationNotAllowedError",
    "RateLimitError",
    "ResourceConflictError",
    "ResourceNotFoundError",
    "SuspectServerError",
    "TaskFailedError",
    "TaskTimeoutError",
    "UnexpectedResponseError",
    "UnprocessableEntityError",
    "ValidationFailedError",
]
