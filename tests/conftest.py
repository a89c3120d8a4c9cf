"""Shared test harness: one real Kafka broker per test run, fresh topics per test.

The broker is started by ``devstack.kafka_broker`` (real Apache Kafka from Maven jars) unless
``RUNSTREAM_KAFKA_BOOTSTRAP`` names one already running. It is always stopped at the end.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from devstack.kafka_broker import DevKafka
from service.kafka import create_topics

_RUN = uuid.uuid4().hex[:8]
_counter = itertools.count()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by folder, so ``-m unit`` / ``-m integration`` select them."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "unit" in parts:
            item.add_marker(pytest.mark.unit)
        elif "integration" in parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("RUNSTREAM_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    broker = DevKafka(data_dir=tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def unique_id() -> Callable[[str], str]:
    def make(prefix: str = "id") -> str:
        return f"{prefix}-{_RUN}-{next(_counter)}"

    return make


@pytest.fixture
def new_topic(kafka_bootstrap: str, unique_id: Callable[[str], str]) -> Callable[..., Awaitable[str]]:
    """``await new_topic(partitions=3)`` creates a topic no other test uses."""

    async def make(partitions: int = 3, prefix: str = "t") -> str:
        name = unique_id(prefix)
        await create_topics(kafka_bootstrap, [name], partitions=partitions)
        return name

    return make
