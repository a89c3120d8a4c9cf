"""Starting aiokafka clients while the broker may be briefly unreachable.

A process (re)started during a broker restart or a rolling upgrade used to exit at once with
``KafkaConnectionError: Unable to bootstrap`` (found by bench/drill.py: an uploader started
while the dev broker was restarting exited 1). Bootstrap is retried with backoff for a bounded
time instead; after that the error propagates, so a broker that never comes back still fails
the process visibly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiokafka.errors import KafkaConnectionError

from service.errors import RunstreamError
from service.kafka_clients import KafkaAuthenticationError, describe_endpoint, sasl_rejected

log = logging.getLogger("runstream.kafka")


class KafkaStartAborted(RunstreamError):
    """Shutdown was requested while a client was still waiting for the broker: a clean stop."""
START_TIMEOUT_S = 120.0


async def start_kafka_client(
    client: Any,
    what: str,
    *,
    timeout_s: float = START_TIMEOUT_S,
    stop: asyncio.Event | None = None,
    bootstrap: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> None:
    """``await client.start()``, retried while the broker cannot be reached (at most ``timeout_s``,
    or until ``stop`` is set). aiokafka's start fails in bootstrap before it sets anything up,
    so calling it again on the same client is safe. Rejected SASL credentials are not a passing
    outage: with ``bootstrap``/``options`` given they fail at once with KafkaAuthenticationError."""
    delay = 0.25
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await client.start()
            return
        except KafkaConnectionError as exc:
            if bootstrap and options and await sasl_rejected(bootstrap, options):
                raise KafkaAuthenticationError(
                    f"{what}: {describe_endpoint(bootstrap, options)} rejected the credentials: "
                    "authentication failed (check the user name and password)"
                ) from exc
            if stop is not None and stop.is_set():
                raise KafkaStartAborted(f"{what}: stopped while waiting for Kafka") from exc
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: Kafka not reachable (%s); retrying in %.1f s", what, exc, delay)
        if stop is None:
            await asyncio.sleep(delay)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
        delay = min(delay * 2, 5.0)
