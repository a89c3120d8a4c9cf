"""Bounded shutdown steps: a step that needs the broker (a final commit, leaving the group,
flushing a producer) must not hold the process when the broker is gone."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger("runstream.shutdown")

# Per step: enough for a reachable broker under load, short enough that all steps together fit
# in the slack the service allows after the grace period.
STEP_TIMEOUT_S = 2.0


async def bounded(step: Awaitable[Any], what: str, timeout_s: float = STEP_TIMEOUT_S, **context: Any) -> bool:
    """Await ``step`` for at most ``timeout_s``; False (and a warning naming what was abandoned) if it
    did not finish or failed."""
    try:
        await asyncio.wait_for(step, timeout_s)
        return True
    except TimeoutError:
        log.warning("shutdown: %s abandoned after %.0f s (broker unreachable?) %s", what, timeout_s, context or "")
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # we are being cancelled ourselves
        # aiokafka's stop() re-raises the cancellation of its own internal fetch task
        log.warning("shutdown: %s was cut short %s", what, context or "")
    except Exception as exc:
        log.warning("shutdown: %s failed: %r %s", what, exc, context or "")
    return False
