"""``runstream topics create``: create the input, DLQ topics with the configured names."""

from __future__ import annotations

import argparse
import asyncio

from runstream.commands import NO_BROKER_HINT
from service.config import Settings
from service.kafka import KafkaEndpoint, create_topics


def dlq_topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """The DLQ topic's limit is set on purpose, not inherited: it must hold any input message plus
    its headers (larger letters are stored truncated, see consumers/dlq/letter.py)."""
    return {settings.topic_dlq: {"max.message.bytes": str(settings.dlq_max_message_bytes)}}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("topics", help="create runstream's Kafka topics")
    p.add_argument("action", choices=["create"], help="what to do")
    p.add_argument("--partitions", type=int, default=6, help="partitions per topic (default %(default)s)")
    p.add_argument("--replication", type=int, default=1, help="replication factor (default %(default)s)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = Settings()
    endpoint = KafkaEndpoint.from_settings(settings, hint=NO_BROKER_HINT)
    names = [settings.topic_predictions, settings.topic_metrics, settings.topic_labels, settings.topic_dlq]
    created = asyncio.run(
        create_topics(
            endpoint.bootstrap,
            names,
            partitions=args.partitions,
            replication=args.replication,
            configs=dlq_topic_configs(settings),
            **endpoint.options,
        )
    )
    for name in names:
        print(f"{name}: {'created' if name in created else 'exists'}")
    return 0
