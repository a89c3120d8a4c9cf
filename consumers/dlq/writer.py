"""DLQ producer shared by the uploader and the aggregator.

A dead-lettered message keeps its original key and value bytes; the reason and the
source coordinates travel in headers (consumers/dlq/headers.py). ``send`` returns only after
the broker acknowledged the write (acks=all, idempotent producer), because the caller
commits the source offset right after: a DLQ write must be durable before the offset
moves (the guarantee Kafka Connect's ErrantRecordReporter gives).

A dead letter always fits: letters are gzip-compressed by the producer, and a value that
exceeds the DLQ topic's ``max.message.bytes`` even compressed is stored truncated, with its
original size and SHA-256 in headers (consumers/dlq/letter.py). A write that still fails (broker down,
topic misconfigured) is retried with backoff as an outage: ``failing`` names the cause
while it lasts, so readiness can report it, and no partition is given up because of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from consumers.dlq.headers import DlqHeaders
from consumers.dlq.letter import dead_letter_record
from service.kafka import START_TIMEOUT_S, KafkaEndpoint, make_admin, make_producer, start_client

log = logging.getLogger("runstream.dlq")

# Kafka's default max.message.bytes (broker message.max.bytes): assumed when the topic's own
# value cannot be read.
DEFAULT_TOPIC_LIMIT = 1_048_588
class DlqWriter:
    """start() / send() / stop(); any broker error is retried with backoff until the letter is sent."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        client_options: dict[str, Any] | None = None,
        max_request_size: int = 64 * 1_048_576,
        retry_max_s: float = 10.0,
        on_failing: Callable[[str | None], None] | None = None,
    ) -> None:
        self.topic = topic
        self._bootstrap = bootstrap
        self._options = dict(client_options or {})
        self._max_request_size = max_request_size
        self._endpoint = KafkaEndpoint(bootstrap, self._options)
        self._producer = make_producer(
            self._endpoint,
            compression_type="gzip",
            # Dead letters come in bursts (a rejected model run: thousands at once); with the 16 KiB
            # default every full batch wakes every waiting sender (quadratic in the burst).
            max_batch_size=1_048_576,
            max_request_size=max_request_size,
        )
        self._retry_max_s = retry_max_s
        self._started = False
        self.limit = DEFAULT_TOPIC_LIMIT
        self.on_failing = on_failing
        self.failing: str | None = None  # why writes fail right now (None: they do not)
        self._failing_since = 0.0

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Start the producer; ``stop`` ends a wait for an unreachable broker (KafkaStartAborted)."""
        await start_client(self._producer, self._endpoint, "DLQ producer", retry_for_s=START_TIMEOUT_S, stop=stop)
        self._started = True
        self.limit = await self.topic_limit()

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Flush and close; bounded, because a producer with unsent letters waits for the broker."""
        if self._started:
            self._started = False
            try:
                await asyncio.wait_for(self._producer.stop(), timeout_s)
            except TimeoutError:
                log.warning("DLQ producer did not stop within %.0f s (broker unreachable?); abandoned", timeout_s)

    async def __aenter__(self) -> DlqWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def topic_limit(self) -> int:
        """The DLQ topic's effective ``max.message.bytes`` (the broker default when not overridden)."""
        return min(await topic_max_message_bytes(self._bootstrap, self.topic, self._options), self._max_request_size)

    def _set_failing(self, reason: str | None) -> None:
        if reason == self.failing:
            return
        if reason is None:
            log.warning("DLQ writes recovered after %.1f s", time.monotonic() - self._failing_since)
        elif self.failing is None:
            self._failing_since = time.monotonic()
            log.error("DLQ write failed; retrying with backoff until it succeeds: %s", reason)
        self.failing = reason
        if self.on_failing is not None:
            self.on_failing(reason)

    async def send(self, key: bytes | None, value: bytes | None, headers: DlqHeaders) -> None:
        """Write one message and wait for the broker's ack; retried until it succeeds.

        Kafka clients cannot produce a record with neither key nor value; such a source
        record is written with an empty value and a ``runstream.original.null`` header.
        """
        delay = 0.1
        limit = self.limit
        while True:
            v, kafka_headers = self._fit(key, value, headers, limit)
            try:
                await self._producer.send_and_wait(self.topic, value=v, key=key, headers=kafka_headers)
                self._set_failing(None)
                return
            except MessageSizeTooLargeError as exc:
                # The topic's limit shrank, or the estimate was off: re-read it, and fit tighter.
                self._set_failing(f"{exc!r}")
                self.limit = await self.topic_limit()
                limit = min(self.limit, limit // 2)
            except KafkaError as exc:
                self._set_failing(f"{exc!r}")
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(self._retry_max_s, delay * 2)

    def _fit(
        self, key: bytes | None, value: bytes | None, headers: DlqHeaders, limit: int
    ) -> tuple[bytes | None, list[tuple[str, bytes]]]:
        return dead_letter_record(key, value, headers, limit)


async def topic_max_message_bytes(bootstrap: str, topic: str, options: dict[str, Any]) -> int:
    """A topic's effective ``max.message.bytes``; DEFAULT_TOPIC_LIMIT when it cannot be read."""
    endpoint = KafkaEndpoint(bootstrap, options)
    admin = make_admin(endpoint)
    try:
        await asyncio.wait_for(start_client(admin, endpoint, "DLQ topic admin"), 10)
        wanted = ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": ""})
        resp = await asyncio.wait_for(admin.describe_configs([wanted]), 10)
        for r in resp:
            for res in r.resources:
                for entry in res[4]:
                    if entry[0] == "max.message.bytes" and entry[1]:
                        return int(entry[1])
    except Exception as exc:  # any failure here only costs the default limit
        log.warning("cannot read max.message.bytes of %s (%r); assuming %d", topic, exc, DEFAULT_TOPIC_LIMIT)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    return DEFAULT_TOPIC_LIMIT
