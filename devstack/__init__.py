"""Dev tooling, apart from the product: the dev Kafka broker, the local Labelbox-compatible API, the demo
stream and the local topology of ``runstream up``. It builds on ``service/``; nothing in ``service/`` or
``consumers/`` imports it (tests/unit/test_layers.py), only the CLI, the tests and the benchmarks."""
