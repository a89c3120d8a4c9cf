"""``runstream demo``: produce the synthetic inference stream of ``devstack.demo_data`` into Kafka.

It sends raw bytes with a plain idempotent producer (not ``RunstreamProducer``), because it must also
send the bad messages the service is expected to dead-letter.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Iterator

import orjson

from devstack.demo_data import DemoMessage, demo_catalog, demo_stream
from runstream.commands import NO_BROKER_HINT
from service.backfill import RateLimiter
from service.config import Settings
from service.errors import ConfigError
from service.events import EventKind
from service.kafka import KafkaEndpoint, create_topics, make_producer, start_client


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="produce a synthetic inference stream (with a few bad events) into Kafka")
    p.add_argument("--model-runs", type=int, default=2, help="model runs in the stream (default %(default)s)")
    p.add_argument("--data-rows", type=int, default=20, help="data rows per model run (default %(default)s)")
    p.add_argument("--rate", type=float, default=50.0, help="events per second (default %(default)s; 0 = no limit)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--duration", type=float, help="stop after this many seconds")
    stop.add_argument("--count", type=int, help="stop after this many events")
    p.add_argument("--bad-fraction", type=float, default=0.02, help="share of bad events (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same catalog and stream (default %(default)s)")
    p.add_argument("--print-catalog", action="store_true", help="print the seed data as JSON and exit")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.model_runs < 1 or args.data_rows < 1:
        raise ConfigError("--model-runs and --data-rows must be at least 1")
    if not 0.0 <= args.bad_fraction <= 1.0:
        raise ConfigError("--bad-fraction must be between 0 and 1")
    catalog = demo_catalog(args.seed, model_runs=args.model_runs, data_rows_per_run=args.data_rows)
    if args.print_catalog:
        sys.stdout.write(orjson.dumps(catalog.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    settings = Settings()
    endpoint = KafkaEndpoint.from_settings(settings, hint=NO_BROKER_HINT)
    stream = demo_stream(catalog, args.seed, bad_fraction=args.bad_fraction)
    sent, bad = asyncio.run(_produce(settings, endpoint, stream, args.rate, args.duration, args.count))
    total = sum(sent.values())
    by_kind = ", ".join(f"{k} {v}" for k, v in sorted(sent.items()))
    print(f"demo: sent {total} events ({by_kind}) for {args.model_runs} model run(s); {bad} bad ones for the DLQ")
    return 0


async def _produce(
    settings: Settings,
    endpoint: KafkaEndpoint,
    stream: Iterator[DemoMessage],
    rate: float,
    duration: float | None,
    count: int | None,
) -> tuple[Counter[str], int]:
    topics: dict[EventKind, str] = {
        "prediction": settings.topic_predictions,
        "metric": settings.topic_metrics,
        "label": settings.topic_labels,
    }
    await create_topics(endpoint.bootstrap, [*topics.values(), settings.topic_dlq], partitions=6, **endpoint.options)
    producer = make_producer(endpoint)
    limiter = RateLimiter(rate) if rate > 0 else None
    sent: Counter[str] = Counter()
    bad = 0
    await start_client(producer, endpoint, "demo producer")
    try:
        t0 = time.monotonic()
        futures = []
        for n, msg in enumerate(stream):
            if count is not None and n >= count:
                break
            now = time.monotonic()
            if duration is not None and now - t0 >= duration:
                break
            if limiter is not None:
                wait = limiter.delay(now)
                if wait > 0:
                    await asyncio.sleep(wait)
            futures.append(await producer.send(topics[msg.kind], msg.value, key=msg.key))
            sent[msg.kind] += 1
            bad += msg.expect is not None
            if len(futures) >= 1000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent, bad
