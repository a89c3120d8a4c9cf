"""Topic administration: create runstream's topics idempotently."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from service.kafka.clients import KafkaEndpoint, make_admin, start_client


async def create_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    partitions: int,
    replication: int = 1,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    **client_opts: Any,
) -> list[str]:
    """Create the topics that do not exist yet (``configs``: per-topic settings); return the names created."""
    endpoint = KafkaEndpoint(bootstrap, client_opts)
    admin = make_admin(endpoint)
    await start_client(admin, endpoint, "topic admin")
    try:
        existing = set(await admin.list_topics())
        wanted = [n for n in dict.fromkeys(names) if n not in existing]
        if not wanted:
            return []
        # A concurrent creator winning the race is the wanted outcome anyway.
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([
                NewTopic(n, partitions, replication, topic_configs=dict((configs or {}).get(n, {})))
                for n in wanted
            ])
        return wanted
    finally:
        await admin.close()
