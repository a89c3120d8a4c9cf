"""Build and start aiokafka clients from Settings, with errors that say what went wrong.

aiokafka reports a wrong SASL password as a bare ``SaslAuthenticationFailed`` (or, on some
paths, a connection error after retries); operators need the user, mechanism and
bootstrap named, and never the password.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError, SaslAuthenticationFailed

from service.config import Settings
from service.errors import ConfigError, RunstreamError


class KafkaUnavailableError(RunstreamError):
    """The brokers could not be reached or refused the connection."""


class KafkaAuthenticationError(KafkaUnavailableError):
    """The brokers rejected runstream's SASL credentials."""


def _bootstrap(settings: Settings) -> str:
    if not settings.kafka_bootstrap:
        raise ConfigError("RUNSTREAM_KAFKA_BOOTSTRAP is not set")
    return settings.kafka_bootstrap


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    opts: dict[str, Any] = {"enable_idempotence": True, "acks": "all", "linger_ms": 5}
    opts.update(settings.kafka_client_options())
    opts.update(overrides)
    return AIOKafkaProducer(bootstrap_servers=_bootstrap(settings), **opts)


def make_consumer(
    settings: Settings, topics: Sequence[str], group_id: str | None, **overrides: Any
) -> AIOKafkaConsumer:
    opts: dict[str, Any] = {"enable_auto_commit": False, "auto_offset_reset": "earliest"}
    opts.update(settings.kafka_client_options())
    opts.update(overrides)
    return AIOKafkaConsumer(*topics, bootstrap_servers=_bootstrap(settings), group_id=group_id, **opts)


async def start_client(client: AIOKafkaProducer | AIOKafkaConsumer, settings: Settings) -> None:
    """``client.start()``, translating failures into runstream errors that name the cause."""
    options = settings.kafka_client_options()
    where = describe_endpoint(_bootstrap(settings), options)
    try:
        await client.start()
    except SaslAuthenticationFailed as exc:
        await _close_quietly(client)
        raise KafkaAuthenticationError(
            f"{where} rejected the credentials: authentication failed (check the user name and password)"
        ) from exc
    except KafkaConnectionError as exc:
        await _close_quietly(client)
        if await sasl_rejected(_bootstrap(settings), options):
            raise KafkaAuthenticationError(
                f"{where} rejected the credentials: authentication failed (check the user name and password)"
            ) from exc
        raise KafkaUnavailableError(f"cannot connect to {where}: {exc}") from exc
    except KafkaError as exc:
        await _close_quietly(client)
        raise KafkaUnavailableError(f"{where} failed to start a client: {exc!r}") from exc


async def sasl_rejected(bootstrap: str, options: Mapping[str, Any]) -> bool:
    """Bootstrap failures hide the SASL verdict in a log line; ask one broker directly."""
    if not options.get("sasl_mechanism"):
        return False
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    try:
        conn = await create_conn(host, int(port), request_timeout_ms=10_000, **options)
    except SaslAuthenticationFailed:
        return True
    except (KafkaError, OSError, ValueError):
        return False
    conn.close()
    return False


def describe_endpoint(bootstrap: str, options: Mapping[str, Any]) -> str:
    """'Kafka at host:port (PROTOCOL, SASL MECH as user 'u')' — never the password."""
    where = f"Kafka at {bootstrap} ({options.get('security_protocol', 'PLAINTEXT')}"
    if options.get("sasl_mechanism"):
        where += f", SASL {options['sasl_mechanism']} as user '{options.get('sasl_plain_username')}'"
    return where + ")"


async def _close_quietly(client: AIOKafkaProducer | AIOKafkaConsumer) -> None:
    try:
        await client.stop()
    except Exception:  # best effort after a failed start
        return
