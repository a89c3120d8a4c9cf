"""SASL settings reach aiokafka; a wrong password is a clear error that hides the password."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.kafka_broker import DevKafka, free_port
from service.config import Settings
from service.kafka import KafkaAuthenticationError, KafkaEndpoint, make_consumer, make_producer, start_client
from service.producer import RunstreamProducer

USERS = {"alice": "alice-secret", "bob": "bob-secret"}


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevKafka, int]]:
    """A second broker with an extra SASL_PLAINTEXT listener (PLAIN and SCRAM-SHA-256)."""
    data = tmp_path_factory.mktemp("kafka-sasl")
    broker_port, controller_port, sasl_port = free_port(), free_port(), free_port()
    plain_jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        + " ".join(f'user_{u}="{p}"' for u, p in USERS.items())
        + ";"
    )
    scram_jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    broker = DevKafka(
        data_dir=data,
        broker_port=broker_port,
        controller_port=controller_port,
        extra_properties={
            "listeners": f"PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port},"
            f"SASL_PLAINTEXT://127.0.0.1:{sasl_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port},"
            f"SASL_PLAINTEXT://127.0.0.1:{sasl_port}",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": plain_jaas,
            "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config": scram_jaas,
        },
        format_args=["--add-scram", "SCRAM-SHA-256=[name=alice,password=alice-secret]"],
    )
    broker.start()
    _wait_listening(sasl_port)  # readiness is probed on PLAINTEXT; the SASL acceptor may open a moment later
    try:
        yield broker, sasl_port
    finally:
        broker.stop()


def _wait_listening(port: int, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _settings(port: int, mechanism: str, user: str, password: str, topic: str) -> Settings:
    return Settings(
        _env_file=None,
        kafka_bootstrap=f"127.0.0.1:{port}",
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username=user,
        kafka_sasl_password=password,
        topic_predictions=topic,
    )


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
async def test_round_trip_over_sasl(sasl_broker: tuple[DevKafka, int], mechanism: str) -> None:
    _, port = sasl_broker
    topic = f"sasl-{mechanism.lower()}"
    settings = _settings(port, mechanism, "alice", USERS["alice"], topic)
    endpoint = KafkaEndpoint.from_settings(settings)
    producer = make_producer(endpoint)
    await start_client(producer, endpoint, "test producer")
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k")
    finally:
        await producer.stop()
    consumer = make_consumer(endpoint, topic, group_id=f"g-{mechanism}")
    await start_client(consumer, endpoint, "test consumer")
    try:
        batch = await consumer.getmany(timeout_ms=10_000)
        for _ in range(5):
            if batch:
                break
            batch = await consumer.getmany(timeout_ms=2_000)
    finally:
        await consumer.stop()
    assert [r.value for records in batch.values() for r in records] == [b"hello"]


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
async def test_wrong_password_is_a_clear_error(sasl_broker: tuple[DevKafka, int], mechanism: str) -> None:
    _, port = sasl_broker
    settings = _settings(port, mechanism, "alice", "not-the-password", "sasl-wrong")
    endpoint = KafkaEndpoint.from_settings(settings)
    producer = make_producer(endpoint)
    with pytest.raises(KafkaAuthenticationError) as exc:
        await start_client(producer, endpoint, "test producer")
    message = str(exc.value)
    assert "rejected the credentials" in message and "alice" in message and mechanism in message
    assert "not-the-password" not in message


async def test_producer_client_names_rejected_credentials(sasl_broker: tuple[DevKafka, int]) -> None:
    _, port = sasl_broker
    settings = _settings(port, "PLAIN", "alice", "not-the-password", "sasl-wrong")
    with pytest.raises(KafkaAuthenticationError) as exc:
        async with RunstreamProducer(settings):
            pass
    message = str(exc.value)
    assert "rejected the credentials" in message and "alice" in message
    assert "not-the-password" not in message


@pytest.mark.parametrize("role", ["aggregator", "uploader"])
def test_service_with_a_wrong_password_stops_with_a_clear_error(
    sasl_broker: tuple[DevKafka, int], role: str, tmp_path: Path
) -> None:
    """Not a 120 s 'broker unreachable' retry loop: the process names the rejected credentials at once."""
    _, port = sasl_broker
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env.update({
        "RUNSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
        "RUNSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "RUNSTREAM_KAFKA_SASL_MECHANISM": "PLAIN",
        "RUNSTREAM_KAFKA_SASL_USERNAME": "alice",
        "RUNSTREAM_KAFKA_SASL_PASSWORD": "wrong-password-789",
        "RUNSTREAM_LABELBOX_API_KEY": "unused-key",
        "RUNSTREAM_LABELBOX_URL": "http://127.0.0.1:9/graphql",
        "RUNSTREAM_STATE_SQLITE_PATH": str(tmp_path / "state.sqlite3"),
    })  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "runstream", "run", "--role", role, "--no-http"],
        env=env, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert time.monotonic() - started < 60, "it should not wait out the unreachable-broker retry"
    assert "rejected the credentials" in out and "alice" in out, out[-3000:]
    assert "wrong-password-789" not in out
