"""The Kafka edge: every aiokafka client runstream uses is built and started here (DESIGN §1)."""

from service.kafka.clients import (
    START_TIMEOUT_S,
    KafkaAuthenticationError,
    KafkaEndpoint,
    KafkaStartAborted,
    KafkaUnavailableError,
    make_admin,
    make_consumer,
    make_producer,
    start_client,
)
from service.kafka.topics import create_topics

__all__ = [
    "START_TIMEOUT_S",
    "KafkaAuthenticationError",
    "KafkaEndpoint",
    "KafkaStartAborted",
    "KafkaUnavailableError",
    "create_topics",
    "make_admin",
    "make_consumer",
    "make_producer",
    "start_client",
]
