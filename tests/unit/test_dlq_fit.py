"""fit_value: a dead letter fits the DLQ topic whole when gzip makes it fit, else as a prefix
with the original size and SHA-256; the truncation headers round-trip."""

from __future__ import annotations

import gzip
import hashlib
import random

import pytest

from consumers.dlq.headers import DlqHeaders
from consumers.dlq.letter import fit_value
from service.errors import DlqHeaderError


def test_small_and_compressible_values_are_kept_whole() -> None:
    assert fit_value(b"x" * 100, 1000) == (b"x" * 100, None, None)
    big = b'{"metricName": "m", "metricValue": 0.5},' * 50_000  # 2 MB, compresses well
    assert fit_value(big, 1_000_000) == (big, None, None)


def test_incompressible_value_is_truncated_and_the_prefix_fits_compressed() -> None:
    raw = random.Random(1).randbytes(2_000_000)
    value, size, digest = fit_value(raw, 1_000_000)
    assert size == len(raw) and digest == hashlib.sha256(raw).hexdigest()
    assert raw.startswith(value) and len(gzip.compress(value, 9)) <= 1_000_000


def test_truncation_headers_round_trip_and_go_together() -> None:
    h = DlqHeaders(error_class="too_large", error_message="m", source_topic="t", source_partition=0,
                   source_offset=1, consumer_group="g", original_size=5, original_sha256="a" * 64)
    back = DlqHeaders.from_kafka(h.to_kafka())
    assert back.truncated and back.original_size == 5 and back.original_sha256 == "a" * 64
    plain = [kv for kv in h.to_kafka() if kv[0] != "runstream.original.sha256"]
    with pytest.raises(DlqHeaderError, match="go together"):
        DlqHeaders.from_kafka(plain)
