"""Build and start aiokafka clients (producers, consumers, admin) with errors that name the cause.

aiokafka reports a wrong SASL password as a bare ``SaslAuthenticationFailed`` or, on some paths,
as a connection error after retries; operators need the user, mechanism and bootstrap named, and
never the password. Long-running roles may be (re)started during a broker restart or a rolling
upgrade, so ``start_client`` can retry an unreachable broker for a bounded time; after that the
error propagates, so a broker that never comes back still fails the process visibly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError, SaslAuthenticationFailed

from service.config import Settings
from service.errors import ConfigError, RunstreamError

log = logging.getLogger("runstream.kafka")

# How long a long-running role waits for an unreachable broker before it gives up.
START_TIMEOUT_S = 120.0

KafkaClient: TypeAlias = AIOKafkaProducer | AIOKafkaConsumer | AIOKafkaAdminClient


class KafkaUnavailableError(RunstreamError):
    """The brokers could not be reached or refused the connection."""


class KafkaAuthenticationError(KafkaUnavailableError):
    """The brokers rejected runstream's SASL credentials."""


class KafkaStartAborted(RunstreamError):
    """Shutdown was requested while a client was still waiting for the broker: a clean stop."""


@dataclass(frozen=True)
class KafkaEndpoint:
    """Where the brokers are and how to talk to them (security options, password included)."""

    bootstrap: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, *, hint: str = "") -> KafkaEndpoint:
        """The configured endpoint; ``hint`` completes the error when RUNSTREAM_KAFKA_BOOTSTRAP is unset."""
        if not settings.kafka_bootstrap:
            raise ConfigError("RUNSTREAM_KAFKA_BOOTSTRAP is not set" + (f"; {hint}" if hint else ""))
        return cls(settings.kafka_bootstrap, settings.kafka_client_options())

    def describe(self) -> str:
        """'Kafka at host:port (PROTOCOL, SASL MECH as user 'u')' — never the password."""
        opts = self.options
        where = f"Kafka at {self.bootstrap} ({opts.get('security_protocol', 'PLAINTEXT')}"
        if opts.get("sasl_mechanism"):
            where += f", SASL {opts['sasl_mechanism']} as user '{opts.get('sasl_plain_username')}'"
        return where + ")"


def make_producer(endpoint: KafkaEndpoint, **config: Any) -> AIOKafkaProducer:
    """An idempotent producer (acks from all replicas) unless ``config`` says otherwise."""
    opts: dict[str, Any] = {"enable_idempotence": True, "acks": "all", "linger_ms": 5}
    opts.update(endpoint.options)
    opts.update(config)
    return AIOKafkaProducer(bootstrap_servers=endpoint.bootstrap, **opts)


def make_consumer(endpoint: KafkaEndpoint, *topics: str, **config: Any) -> AIOKafkaConsumer:
    """A consumer that commits only explicitly and starts from the earliest offset by default."""
    opts: dict[str, Any] = {"enable_auto_commit": False, "auto_offset_reset": "earliest"}
    opts.update(endpoint.options)
    opts.update(config)
    return AIOKafkaConsumer(*topics, bootstrap_servers=endpoint.bootstrap, **opts)


def make_admin(endpoint: KafkaEndpoint, **config: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=endpoint.bootstrap, **{**endpoint.options, **config})


async def start_client(
    client: KafkaClient,
    endpoint: KafkaEndpoint,
    what: str,
    *,
    retry_for_s: float = 0.0,
    stop: asyncio.Event | None = None,
) -> None:
    """``await client.start()``; an unreachable broker is retried for at most ``retry_for_s`` (or until
    ``stop`` is set: KafkaStartAborted). aiokafka's start fails in bootstrap before it sets anything
    up, so calling it again on the same client is safe. Rejected credentials are not a passing
    outage: they fail at once with KafkaAuthenticationError. Any failure closes the client."""
    delay = 0.25
    deadline = time.monotonic() + retry_for_s
    while True:
        try:
            await client.start()
            return
        except SaslAuthenticationFailed as exc:
            await _close_quietly(client)
            raise _rejected(endpoint, what) from exc
        except KafkaConnectionError as exc:
            if await sasl_rejected(endpoint):
                await _close_quietly(client)
                raise _rejected(endpoint, what) from exc
            if stop is not None and stop.is_set():
                await _close_quietly(client)
                raise KafkaStartAborted(f"{what}: stopped while waiting for Kafka") from exc
            if time.monotonic() + delay > deadline:
                await _close_quietly(client)
                raise KafkaUnavailableError(f"{what}: cannot connect to {endpoint.describe()}: {exc}") from exc
            log.warning("%s: Kafka not reachable (%s); retrying in %.1f s", what, exc, delay)
        except KafkaError as exc:
            await _close_quietly(client)
            raise KafkaUnavailableError(f"{what}: {endpoint.describe()} failed to start a client: {exc!r}") from exc
        if stop is None:
            await asyncio.sleep(delay)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
        delay = min(delay * 2, 5.0)


def _rejected(endpoint: KafkaEndpoint, what: str) -> KafkaAuthenticationError:
    return KafkaAuthenticationError(
        f"{what}: {endpoint.describe()} rejected the credentials: authentication failed "
        "(check the user name and password)"
    )


async def sasl_rejected(endpoint: KafkaEndpoint) -> bool:
    """Bootstrap failures hide the SASL verdict in a log line; ask one broker directly."""
    if not endpoint.options.get("sasl_mechanism"):
        return False
    host, _, port = endpoint.bootstrap.split(",")[0].strip().rpartition(":")
    try:
        conn = await create_conn(host, int(port), request_timeout_ms=10_000, **endpoint.options)
    except SaslAuthenticationFailed:
        return True
    except (KafkaError, OSError, ValueError):
        return False
    conn.close()
    return False


async def _close_quietly(client: KafkaClient) -> None:
    try:
        if isinstance(client, AIOKafkaAdminClient):
            await client.close()
        else:
            await client.stop()
    except Exception:  # best effort after a failed start
        return
