"""Re-export of ``service.kafka.topics`` for callers that import the old module name."""

from service.kafka.topics import create_topics

__all__ = ["create_topics"]
