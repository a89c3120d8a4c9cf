"""Re-export of the Kafka edge's start-with-retry for callers that import the old module name."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from service.kafka.clients import START_TIMEOUT_S, KafkaEndpoint, KafkaStartAborted, start_client

__all__ = ["START_TIMEOUT_S", "KafkaStartAborted", "start_kafka_client"]


async def start_kafka_client(
    client: Any,
    what: str,
    *,
    timeout_s: float = START_TIMEOUT_S,
    stop: asyncio.Event | None = None,
    bootstrap: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> None:
    """``service.kafka.start_client`` with the long-running roles' retry window."""
    await start_client(client, KafkaEndpoint(bootstrap or "", options or {}), what, retry_for_s=timeout_s, stop=stop)
