"""Exception types shared across runstream.

Every rejection carries a stable short ``error_class`` (it becomes the DLQ header
``runstream.error.class``) and a human message that names the field, so an operator
reading the DLQ knows what to fix without opening the code.
"""

from __future__ import annotations


class RunstreamError(Exception):
    """Base of every error runstream raises on purpose."""


class EventValidationError(RunstreamError):
    """An event (or one row of it) breaks the event contract (docs/EVENTS.md).

    ``field`` is a dotted path into the event (``predictions[2].dataRow.id``); ``reason``
    says what is wrong in plain words.
    """

    error_class: str = "schema"

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


class MalformedJsonError(EventValidationError):
    """The message value is not UTF-8 JSON, or not a JSON object."""

    error_class = "json"


class MessageTooLargeError(EventValidationError):
    """The raw message exceeds the configured size limit; it is rejected before parsing."""

    error_class = "too_large"

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__("value", f"message is {size} bytes, over the limit of {limit} bytes")


class ConfigError(RunstreamError):
    """Configuration is missing or inconsistent."""


class DlqHeaderError(RunstreamError):
    """A dead-lettered message lacks a runstream header or carries an invalid one."""

    def __init__(self, header: str, reason: str) -> None:
        self.header = header
        self.reason = reason
        super().__init__(f"{header}: {reason}")
