"""Topic administration: create runstream's topics idempotently."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


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
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_opts)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [n for n in dict.fromkeys(names) if n not in existing]
        if not wanted:
            return []
        # A concurrent creator winning the race is what we wanted anyway.
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([
                NewTopic(n, partitions, replication, topic_configs=dict((configs or {}).get(n, {})))
                for n in wanted
            ])
        return wanted
    finally:
        await admin.close()
