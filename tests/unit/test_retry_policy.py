from __future__ import annotations

import asyncio

import pytest

from service.labelbox import errors as lb
from service.labelbox.retry_policy import Outcome, backoff_delay, classify, retrying, should_retry


@pytest.mark.parametrize(
    ("exc", "outcome", "reason"),
    [
        (lb.InternalServerError("x", status=503), Outcome.TRANSIENT, "server_error"),
        (lb.RateLimitError("You have exceeded", status=429, retry_after=3), Outcome.TRANSIENT, "rate_limit"),
        (lb.NetworkError("reset"), Outcome.TRANSIENT, "network"),
        (lb.TaskTimeoutError("slow"), Outcome.TRANSIENT, "timeout"),
        (lb.ImportFailedError("FAILED"), Outcome.TRANSIENT, "import_failed"),
        (ConnectionResetError(), Outcome.TRANSIENT, "network"),
        (TimeoutError(), Outcome.TRANSIENT, "network"),
        (lb.AuthenticationError("Invalid API key"), Outcome.FATAL, "auth"),
        (lb.AuthorizationError("nope"), Outcome.FATAL, "auth"),
        (lb.InvalidQueryError("bad"), Outcome.PERMANENT, "rejected"),
        (lb.UnprocessableEntityError("bad"), Outcome.PERMANENT, "rejected"),
        (lb.TaskFailedError("Job failed."), Outcome.PERMANENT, "rejected"),
        (lb.UnexpectedResponseError("400"), Outcome.PERMANENT, "rejected"),
        (ValueError("our bug"), Outcome.FATAL, "unexpected"),
    ],
)
def test_classify(exc: BaseException, outcome: Outcome, reason: str) -> None:
    c = classify(exc)
    assert (c.outcome, c.reason) == (outcome, reason)


def test_retry_after_is_kept() -> None:
    assert classify(lb.RateLimitError("x", retry_after=7.0)).retry_after == 7.0


def test_full_jitter_bounds() -> None:
    assert backoff_delay(1, initial=0.5, maximum=30, rnd=lambda: 0.999999) < 0.5
    assert backoff_delay(4, initial=0.5, maximum=30, rnd=lambda: 0.5) == pytest.approx(2.0)
    assert backoff_delay(20, initial=0.5, maximum=30, rnd=lambda: 0.5) == pytest.approx(15.0)
    assert backoff_delay(1, initial=0.5, maximum=30, rnd=lambda: 0.0) == 0.0


def test_retry_after_is_a_floor() -> None:
    assert backoff_delay(1, initial=0.5, maximum=30, rnd=lambda: 0.1, retry_after=4) == 4
    assert backoff_delay(1, initial=0.5, maximum=30, rnd=lambda: 0.1, retry_after=45) == 45


def test_should_retry_caps() -> None:
    t = classify(lb.InternalServerError("x"))
    assert should_retry(t, 10_000, None)  # forever by default
    assert should_retry(t, 2, 3) and not should_retry(t, 3, 3)
    f = classify(lb.ImportFailedError("x"))
    assert should_retry(f, 3, None) and not should_retry(f, 4, None)  # its own cap
    assert not should_retry(classify(lb.InvalidQueryError("x")), 1, None)
    assert not should_retry(classify(lb.AuthenticationError("x")), 1, None)


async def test_tenacity_policy_retries_transient_then_succeeds() -> None:
    calls: list[int] = []
    sleeps: list[float] = []
    seen: list[str] = []

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)

    async def op() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise lb.RateLimitError("You have exceeded", status=429, retry_after=2.5)
        if len(calls) < 4:
            raise lb.InternalServerError("503", status=503)
        return "ok"

    r = retrying(initial_s=0.5, max_s=30, max_attempts=None, rnd=lambda: 0.5, sleep=fake_sleep,
                 on_retry=lambda c, n, d, e: seen.append(c.reason))
    assert await r(op) == "ok"
    assert len(calls) == 4
    assert sleeps == [2.5, 0.5, 1.0]
    assert seen == ["rate_limit", "server_error", "server_error"]


async def test_tenacity_policy_permanent_raises_immediately_and_cap_applies() -> None:
    async def bad() -> None:
        raise lb.InvalidQueryError("nope")

    async def fake_sleep(s: float) -> None:
        await asyncio.sleep(0)

    with pytest.raises(lb.InvalidQueryError):
        await retrying(initial_s=0.1, max_s=1, max_attempts=None, sleep=fake_sleep)(bad)

    n: list[int] = []

    async def down() -> None:
        n.append(1)
        raise lb.NetworkError("down")

    with pytest.raises(lb.NetworkError):
        await retrying(initial_s=0.1, max_s=1, max_attempts=3, sleep=fake_sleep)(down)
    assert len(n) == 3
