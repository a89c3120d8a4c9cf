"""Pure retry classification and the tenacity policy built on it (DESIGN §3).

Three outcomes: TRANSIENT (wait and try the same request again), PERMANENT (the payload
is at fault: bisect the batch and DLQ the offenders) and FATAL (credentials: stop the
pipeline, commit nothing, DLQ nothing). Kept free of I/O so every branch is unit-tested;
the only clock and randomness come in through arguments.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from service.labelbox import errors as lb
from service.labelbox.error_scope import Scope, scope_of
from service.labelbox.errors import (
    LabelboxError,
    LabelboxFatalError,
    LabelboxPermanentError,
    LabelboxTransientError,
)


class Outcome(enum.Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    FATAL = "fatal"


@dataclass(frozen=True)
class Classification:
    outcome: Outcome
    reason: str  # short label for metrics: rate_limit, server_error, network, timeout, import_failed, ...
    retry_after: float | None = None
    max_attempts: int | None = None  # the error's own cap on attempts (None: the policy's)


def classify(exc: BaseException) -> Classification:
    """Decide what an exception from a Labelbox call means for the batch."""
    if isinstance(exc, LabelboxFatalError):
        return Classification(Outcome.FATAL, "auth")
    if isinstance(exc, LabelboxTransientError):
        reason = {
            lb.RateLimitError: "rate_limit",
            lb.NetworkError: "network",
            lb.TaskTimeoutError: "timeout",
            lb.ImportFailedError: "import_failed",
            lb.SuspectServerError: "server_error",
            lb.InternalServerError: "server_error",
        }.get(type(exc), "transient")
        return Classification(Outcome.TRANSIENT, reason, exc.retry_after, exc.max_attempts)
    if isinstance(exc, LabelboxPermanentError):
        return Classification(Outcome.PERMANENT, "rejected")
    # The HTTP client turns its library's errors into NetworkError; bare socket errors and
    # timeouts from anywhere else on the call path are network trouble too.
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return Classification(Outcome.TRANSIENT, "network")
    # Anything else is a bug on our side. Dead-lettering on a bug would empty the topics
    # into the DLQ, and retrying would spin: stop instead (nothing committed, nothing lost).
    return Classification(Outcome.FATAL, "unexpected")


def error_scope(exc: BaseException, model_run_id: str | None = None) -> Scope | None:
    """RUN or PAYLOAD for a permanent error, or an authorization error, of a call for ``model_run_id``
    (service.labelbox.error_scope decides on Labelbox's code and text); None for anything else."""
    if not isinstance(exc, (LabelboxPermanentError, lb.AuthorizationError)):
        return None
    code = {
        lb.ResourceNotFoundError: "RESOURCE_NOT_FOUND",
        lb.AuthorizationError: "AUTHORIZATION_ERROR",
        lb.OperationNotAllowedError: "OPERATION_NOT_ALLOWED",
        lb.ResourceConflictError: "RESOURCE_CONFLICT",
    }.get(type(exc))
    message = exc.message if isinstance(exc, LabelboxError) else str(exc)
    return scope_of(code, message, model_run_id=model_run_id)


def backoff_delay(attempt: int, *, initial: float, maximum: float, rnd: Callable[[], float],
                  retry_after: float | None = None) -> float:
    """Full jitter: uniform(0, min(maximum, initial * 2**(attempt-1))), never below Retry-After.

    ``attempt`` counts from 1 (the first retry). ``rnd`` returns a float in [0, 1).
    """
    ceiling = min(maximum, initial * (2.0 ** max(0, attempt - 1)))
    delay = rnd() * ceiling
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def should_retry(c: Classification, attempt: int, max_attempts: int | None) -> bool:
    """True when a failed ``attempt`` (1-based) may be followed by another one."""
    if c.outcome is not Outcome.TRANSIENT:
        return False
    caps = [m for m in (max_attempts, c.max_attempts) if m is not None]
    return not caps or attempt < min(caps)


class _Wait(wait_base):
    def __init__(self, initial: float, maximum: float, rnd: Callable[[], float]) -> None:
        self._initial = initial
        self._maximum = maximum
        self._rnd = rnd

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        ra = classify(exc).retry_after if exc is not None else None
        return float(backoff_delay(retry_state.attempt_number, initial=self._initial, maximum=self._maximum,
                                   rnd=self._rnd, retry_after=ra))


class _Stop(stop_base):
    def __init__(self, max_attempts: int | None) -> None:
        self._max = max_attempts

    def __call__(self, retry_state: RetryCallState) -> bool:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if exc is None:
            return True
        return not should_retry(classify(exc), retry_state.attempt_number, self._max)


def retrying(
    *,
    initial_s: float,
    max_s: float,
    max_attempts: int | None,
    on_retry: Callable[[Classification, int, float, BaseException], None] | None = None,
    rnd: Callable[[], float] = random.random,
    sleep: Callable[[float], Any] | None = None,
) -> AsyncRetrying:
    """A tenacity AsyncRetrying: transient errors retried with full jitter; others re-raised at once."""

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is None or state.outcome is None:
            return
        exc = state.outcome.exception()
        if exc is not None:
            delay = state.next_action.sleep if state.next_action else 0.0
            on_retry(classify(exc), state.attempt_number, float(delay), exc)

    kwargs: dict[str, Any] = {}
    if sleep is not None:
        kwargs["sleep"] = sleep
    return AsyncRetrying(
        retry=retry_if_exception(lambda e: classify(e).outcome is Outcome.TRANSIENT),
        wait=_Wait(initial_s, max_s, rnd),
        stop=_Stop(max_attempts),
        before_sleep=before_sleep,
        reraise=True,
        **kwargs,
    )
