"""Re-export of service/prometheus.py for the aggregator, which imports the old module name."""

from service.prometheus import ConsumerMetrics

__all__ = ["ConsumerMetrics"]
