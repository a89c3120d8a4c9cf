"""One way to build a dead letter: the record (value + Kafka headers) that fits the DLQ topic.

A dead letter keeps its original key and value bytes; the reason and the source coordinates
travel in headers (``consumers.dlq.headers``). A value that exceeds the DLQ topic's
``max.message.bytes`` even compressed is stored truncated, with its original size and SHA-256 in
headers, so a DLQ write never fails on size. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import logging
import zlib

from consumers.dlq.headers import DlqHeaders

log = logging.getLogger("runstream.dlq")

# Room for the record batch header, the record's own framing and varints.
_FRAMING = 1024


def _headers_size(headers: list[tuple[str, bytes]]) -> int:
    return sum(len(k) + len(v) + 10 for k, v in headers)


def fit_value(value: bytes, room: int) -> tuple[bytes, int | None, str | None]:
    """``(value, None, None)`` when ``value`` fits ``room`` bytes once gzip-compressed; else a prefix
    that does, with the original size and SHA-256 hex digest. Pure; the estimate uses zlib at a lower
    level than the producer's gzip (9), so the real compressed size is at most the estimate."""
    if len(value) <= room or len(zlib.compress(value, 6)) + 64 <= room:
        return value, None, None
    # Incompressible bytes grow by a few bytes per 16 KiB block under deflate: keep 1 % spare.
    keep = max(0, int(room * 0.99) - 64)
    return value[:keep], len(value), hashlib.sha256(value).hexdigest()


def dead_letter_record(
    key: bytes | None, value: bytes | None, headers: DlqHeaders, limit: int
) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """The value and Kafka headers to write for one dead letter so that it fits ``limit`` bytes."""
    kafka_headers = headers.to_kafka()
    if key is None and value is None:
        return b"", [*kafka_headers, ("runstream.original.null", b"key,value")]
    if value is None:
        return None, kafka_headers
    # The truncation headers themselves take room: reserve it before fitting.
    room = limit - _FRAMING - len(key or b"") - _headers_size(kafka_headers) - 120
    fitted, size, digest = fit_value(value, room)
    if size is None:
        return value, kafka_headers
    log.warning("dead letter truncated to fit the DLQ topic: %d of %d bytes kept (%s %s/%d)",
                len(fitted), size, headers.source_topic, headers.source_partition, headers.source_offset)
    truncated = headers.model_copy(update={"original_size": size, "original_sha256": digest})
    return fitted, truncated.to_kafka()
