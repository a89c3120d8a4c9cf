"""DLQ producer shared by the uploader and the aggregator.

A dead-lettered message keeps its original key and value bytes; the reason and the
source coordinates travel in headers (service.dlq_headers). ``send`` returns only after
the broker acknowledged the write (acks=all, idempotent producer), because the caller
commits the source offset right after: a DLQ write must be durable before the offset
moves (the ErrantRecordReporter guarantee of Kafka Connect, peers.md §1.1).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError

from consumers.kafka_start import start_kafka_client
from service.dlq_headers import DlqHeaders


class DlqWriter:
    """start() / send() / stop(); transient broker errors are retried with backoff until sent."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        client_options: dict[str, Any] | None = None,
        max_request_size: int = 8 * 1_048_576,
        retry_max_s: float = 10.0,
    ) -> None:
        self.topic = topic
        self._bootstrap = bootstrap
        self._options = dict(client_options or {})
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            # Dead letters come in bursts (a rejected model run: thousands at once); with the 16 KiB
            # default every full batch wakes every waiting sender (quadratic in the burst).
            max_batch_size=1_048_576,
            max_request_size=max_request_size,
            **(client_options or {}),
        )
        self._retry_max_s = retry_max_s
        self._started = False

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Start the producer; ``stop`` ends a wait for an unreachable broker (KafkaStartAborted)."""
        await start_kafka_client(
            self._producer, "DLQ producer", stop=stop, bootstrap=self._bootstrap, options=self._options
        )
        self._started = True

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self._producer.stop()

    async def __aenter__(self) -> DlqWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def send(self, key: bytes | None, value: bytes | None, headers: DlqHeaders) -> None:
        """Write one message and wait for the broker's ack; retried until it succeeds.

        Kafka clients cannot produce a record with neither key nor value; such a source
        record is written with an empty value and a ``runstream.original.null`` header.
        """
        kafka_headers = headers.to_kafka()
        if key is None and value is None:
            value = b""
            kafka_headers.append(("runstream.original.null", b"key,value"))
        delay = 0.1
        while True:
            try:
                await self._producer.send_and_wait(self.topic, value=value, key=key, headers=kafka_headers)
                return
            except KafkaError as exc:
                if not getattr(exc, "retriable", False) and not isinstance(exc, KafkaTimeoutError):
                    # Non-retriable (e.g. record too large): surface it, the caller cannot commit.
                    raise
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(self._retry_max_s, delay * 2)
