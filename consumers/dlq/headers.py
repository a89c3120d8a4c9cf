"""DLQ headers (docs/EVENTS.md): why a message was dead-lettered and where it came from.

The original key and value stay untouched; everything runstream knows about the failure travels
in these headers so ``dlq replay`` can send the message back to its source topic and an operator
can read the reason with any Kafka tool.

One exception keeps a DLQ write from ever failing on size: a value that does not fit the DLQ
topic's ``max.message.bytes`` even compressed is stored truncated, and then
``runstream.original.size`` (bytes of the original value) and ``runstream.original.sha256`` (hex
SHA-256 of the original value) say so; ``dlq replay`` refuses such letters.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal, Protocol, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.errors import DlqHeaderError

__all__ = ["ERROR_CLASSES", "HEADER_PREFIX", "DlqErrorClass", "DlqHeaders"]

DlqErrorClass = Literal[
    "json",
    "schema",
    "too_large",
    "labelbox.row_failed",
    "labelbox.rejected",
    "labelbox.model_run",
    "aggregate.conflict",
    "aggregate.domain",
]
ERROR_CLASSES: frozenset[str] = frozenset(get_args(DlqErrorClass))
HEADER_PREFIX = "runstream."
# Kafka counts headers against the message size limit; a Labelbox error text can be long.
MAX_MESSAGE_CHARS = 8192

_HEADERS = {
    "error_class": "runstream.error.class",
    "error_message": "runstream.error.message",
    "source_topic": "runstream.source.topic",
    "source_partition": "runstream.source.partition",
    "source_offset": "runstream.source.offset",
    "consumer_group": "runstream.consumer.group",
    "failed_at": "runstream.failed.at",
}
# Present only on a truncated letter: the value is a prefix of the original.
_OPTIONAL_HEADERS = {
    "original_size": "runstream.original.size",
    "original_sha256": "runstream.original.sha256",
}


def _now() -> datetime:
    return datetime.now(UTC)


class SourceRecord(Protocol):
    """Where a dead-lettered message came from (an aiokafka ConsumerRecord has these)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


class DlqHeaders(BaseModel):
    """The runstream headers of one dead-lettered message."""

    model_config = ConfigDict(frozen=True)

    # Any stable dotted code is accepted, not only ERROR_CLASSES: refusing an unforeseen code would
    # fail the DLQ write itself, and a message must never be lost because its reason is new.
    error_class: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$", max_length=64)
    error_message: str
    source_topic: str = Field(min_length=1)
    source_partition: int = Field(ge=0)
    source_offset: int = Field(ge=0)
    consumer_group: str = Field(min_length=1)
    failed_at: datetime = Field(default_factory=_now)
    original_size: int | None = Field(default=None, ge=0)
    original_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _both_or_neither(self) -> DlqHeaders:
        if (self.original_size is None) != (self.original_sha256 is None):
            raise ValueError("runstream.original.size and runstream.original.sha256 go together")
        return self

    @classmethod
    def for_record(cls, record: SourceRecord, *, error_class: str, message: str, group: str) -> DlqHeaders:
        """The headers of ``record`` dead-lettered by consumer group ``group`` now."""
        return cls(
            error_class=error_class,
            error_message=message,
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
            consumer_group=group,
        )

    @property
    def truncated(self) -> bool:
        """The stored value is a prefix of the original (which was too large for the DLQ topic)."""
        return self.original_size is not None

    @field_validator("error_message")
    @classmethod
    def _cap_message(cls, value: str) -> str:
        """Truncate rather than fail: a DLQ write must not be refused because the reason is long."""
        return value if len(value) <= MAX_MESSAGE_CHARS else value[: MAX_MESSAGE_CHARS - 1] + "…"

    @field_validator("failed_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        """A naive time is ambiguous once it leaves the process; require an offset and store UTC."""
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("must carry a timezone (ISO-8601 with Z or an offset)")
        return value.astimezone(UTC)

    def to_kafka(self) -> list[tuple[str, bytes]]:
        """Header list for aiokafka ``send(headers=...)``; all values UTF-8 text."""
        failed_at = self.failed_at.isoformat(timespec="microseconds").replace("+00:00", "Z")
        values = {**self.model_dump(include=set(_HEADERS) | set(_OPTIONAL_HEADERS)), "failed_at": failed_at}
        return [
            (header, str(values[field]).encode("utf-8", "replace"))
            for field, header in (_HEADERS | _OPTIONAL_HEADERS).items()
            if values[field] is not None
        ]

    @classmethod
    def from_kafka(cls, headers: Iterable[tuple[str, bytes | None]] | None) -> DlqHeaders:
        """Read the runstream headers back; other headers are ignored, a missing or bad one raises DlqHeaderError."""
        found: dict[str, str] = {}
        wanted = {h: f for f, h in (_HEADERS | _OPTIONAL_HEADERS).items()}
        for key, value in headers or ():
            field = wanted.get(key)
            if field is None:
                continue
            if value is None:
                raise DlqHeaderError(key, "has no value")
            try:
                text = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise DlqHeaderError(key, "is not valid UTF-8") from None
            if field in found and found[field] != text:
                raise DlqHeaderError(key, "appears more than once with different values")
            found[field] = text
        for field, header in _HEADERS.items():
            if field not in found:
                raise DlqHeaderError(header, "is missing")
        try:
            return cls.model_validate(found)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else ""
            header = (_HEADERS | _OPTIONAL_HEADERS).get(field, field)
            raise DlqHeaderError(header, f"invalid value {found.get(field)!r}: {err['msg']}") from None
