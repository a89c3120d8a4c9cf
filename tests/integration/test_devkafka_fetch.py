from __future__ import annotations

from pathlib import Path

import pytest

from devstack.kafka_broker import DevKafkaError, ensure_jars


def test_unfetchable_version_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DevKafkaError, match=r"could not fetch Kafka 0\.0\.1 jars"):
        ensure_jars("0.0.1", cache_dir=tmp_path)


def test_taken_port_is_an_error_not_a_false_ready(tmp_path: Path) -> None:
    """A connect to the port must not count as ready when another process holds it."""
    import socket

    from devstack.kafka_broker import DevKafka, free_port

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = DevKafka(data_dir=tmp_path, broker_port=port, controller_port=free_port(), start_timeout_s=60)
        try:
            with pytest.raises(DevKafkaError, match=f"Address already in use: port {port}"):
                broker.start()
        finally:
            broker.stop()
