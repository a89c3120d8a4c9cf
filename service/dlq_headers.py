"""Re-export of consumers/dlq/headers.py for the aggregator, which imports the old module name."""

from consumers.dlq.headers import ERROR_CLASSES, HEADER_PREFIX, MAX_MESSAGE_CHARS, DlqErrorClass, DlqHeaders

__all__ = ["ERROR_CLASSES", "HEADER_PREFIX", "MAX_MESSAGE_CHARS", "DlqErrorClass", "DlqHeaders"]
