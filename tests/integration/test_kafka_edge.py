"""The Kafka edge names the cause when the broker cannot be reached (real sockets, nothing mocked)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from service.config import Settings
from service.kafka import (
    KafkaEndpoint,
    KafkaStartAborted,
    KafkaUnavailableError,
    create_topics,
    make_consumer,
    make_producer,
    start_client,
)
from service.producer import RunstreamProducer


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_broker_is_named() -> None:
    endpoint = KafkaEndpoint(f"127.0.0.1:{_closed_port()}")
    with pytest.raises(KafkaUnavailableError) as exc:
        await start_client(make_producer(endpoint), endpoint, "test producer")
    message = str(exc.value)
    assert message.startswith("test producer: cannot connect to Kafka at 127.0.0.1:"), message
    assert "(PLAINTEXT)" in message


async def test_retry_window_is_bounded_and_stop_aborts_it() -> None:
    endpoint = KafkaEndpoint(f"127.0.0.1:{_closed_port()}")
    started = time.monotonic()
    with pytest.raises(KafkaUnavailableError):
        await start_client(make_consumer(endpoint), endpoint, "test consumer", retry_for_s=1.0)
    assert 0.5 <= time.monotonic() - started < 30
    stop = asyncio.Event()
    stop.set()
    with pytest.raises(KafkaStartAborted):
        await start_client(make_consumer(endpoint), endpoint, "test consumer", retry_for_s=60.0, stop=stop)


async def test_producer_client_and_topic_admin_name_an_unreachable_broker() -> None:
    bootstrap = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(KafkaUnavailableError, match=r"cannot connect to Kafka at 127\.0\.0\.1"):
        async with RunstreamProducer(Settings(_env_file=None, kafka_bootstrap=bootstrap)):  # type: ignore[call-arg]
            pass
    with pytest.raises(KafkaUnavailableError, match=r"topic admin: cannot connect to Kafka at 127\.0\.0\.1"):
        await create_topics(bootstrap, ["t"], partitions=1)
