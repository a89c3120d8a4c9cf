"""One module per CLI command; each exposes ``register(subparsers)`` and sets ``func``."""

# What a command that needs Kafka says when RUNSTREAM_KAFKA_BOOTSTRAP is unset (KafkaEndpoint.from_settings).
NO_BROKER_HINT = "start a broker with 'runstream dev-kafka start'"
