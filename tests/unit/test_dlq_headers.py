"""DLQ headers: the Kafka header form round-trips, and a bad header is reported by name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from consumers.dlq.headers import ERROR_CLASSES, MAX_MESSAGE_CHARS, DlqHeaders
from service.errors import DlqHeaderError

AT = datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=UTC)


def headers(**over: object) -> DlqHeaders:
    fields: dict[str, object] = {
        "error_class": "schema",
        "error_message": "predictions[2].dataRow: must have exactly one of id or globalKey, got both",
        "source_topic": "runstream.predictions",
        "source_partition": 2,
        "source_offset": 1234,
        "consumer_group": "runstream-uploader",
        "failed_at": AT,
    }
    fields.update(over)
    return DlqHeaders.model_validate(fields)


def test_to_kafka_names_and_values() -> None:
    assert dict(headers().to_kafka()) == {
        "runstream.error.class": b"schema",
        "runstream.error.message": b"predictions[2].dataRow: must have exactly one of id or globalKey, got both",
        "runstream.source.topic": b"runstream.predictions",
        "runstream.source.partition": b"2",
        "runstream.source.offset": b"1234",
        "runstream.consumer.group": b"runstream-uploader",
        "runstream.failed.at": b"2024-05-01T12:30:45.123456Z",
    }


def test_round_trip_ignores_foreign_headers() -> None:
    h = headers()
    assert DlqHeaders.from_kafka([("traceparent", b"00-abc"), *h.to_kafka(), ("x", None)]) == h


@pytest.mark.parametrize("code", sorted(ERROR_CLASSES))
def test_every_error_class(code: str) -> None:
    h = headers(error_class=code)
    assert DlqHeaders.from_kafka(h.to_kafka()).error_class == code


def test_unforeseen_error_class_is_still_accepted() -> None:
    assert DlqHeaders.from_kafka(headers(error_class="aggregate").to_kafka()).error_class == "aggregate"


def test_failed_at_defaults_to_now_utc() -> None:
    h = DlqHeaders(
        error_class="json", error_message="x", source_topic="t", source_partition=0, source_offset=0, consumer_group="g"
    )
    assert h.failed_at.tzinfo is not None and abs(datetime.now(UTC) - h.failed_at) < timedelta(minutes=1)


def test_failed_at_offset_is_normalized_to_utc_and_naive_rejected() -> None:
    local = AT.astimezone(timezone(timedelta(hours=2)))
    assert headers(failed_at=local).failed_at == AT
    assert headers(failed_at=local).to_kafka()[-1] == ("runstream.failed.at", b"2024-05-01T12:30:45.123456Z")
    with pytest.raises(ValidationError):
        headers(failed_at=datetime(2024, 5, 1))


def test_long_message_is_truncated_not_refused() -> None:
    h = headers(error_message="x" * (MAX_MESSAGE_CHARS * 2))
    assert len(h.error_message) == MAX_MESSAGE_CHARS and h.error_message.endswith("…")


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"error_class": "Not A Code"}, "error_class"),
        ({"error_class": ""}, "error_class"),
        ({"source_partition": -1}, "source_partition"),
        ({"source_offset": -5}, "source_offset"),
        ({"source_topic": ""}, "source_topic"),
        ({"consumer_group": ""}, "consumer_group"),
    ],
)
def test_model_rejects_invalid_fields(over: dict[str, object], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        headers(**over)


@pytest.mark.parametrize(
    "name",
    [
        "runstream.error.class",
        "runstream.error.message",
        "runstream.source.topic",
        "runstream.source.partition",
        "runstream.source.offset",
        "runstream.consumer.group",
        "runstream.failed.at",
    ],
)
def test_from_kafka_missing_header(name: str) -> None:
    raw = [(k, v) for k, v in headers().to_kafka() if k != name]
    with pytest.raises(DlqHeaderError) as info:
        DlqHeaders.from_kafka(raw)
    assert info.value.header == name and "missing" in info.value.reason


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("runstream.error.class", b"no pe", "invalid value 'no pe'"),
        ("runstream.source.partition", b"two", "invalid value 'two'"),
        ("runstream.source.offset", b"-1", "invalid value '-1'"),
        ("runstream.failed.at", b"yesterday", "invalid value 'yesterday'"),
        ("runstream.failed.at", b"2024-05-01T12:30:45", "timezone"),
        ("runstream.source.topic", b"\xff", "UTF-8"),
        ("runstream.source.topic", None, "no value"),
    ],
)
def test_from_kafka_invalid_header(name: str, value: bytes | None, words: str) -> None:
    raw: list[tuple[str, bytes | None]] = [(k, value if k == name else v) for k, v in headers().to_kafka()]
    with pytest.raises(DlqHeaderError) as info:
        DlqHeaders.from_kafka(raw)
    assert info.value.header == name and words in info.value.reason, str(info.value)


def test_from_kafka_conflicting_duplicate() -> None:
    raw: list[tuple[str, bytes | None]] = [*headers().to_kafka(), ("runstream.source.offset", b"9")]
    with pytest.raises(DlqHeaderError, match="more than once"):
        DlqHeaders.from_kafka(raw)


def test_from_kafka_none_headers() -> None:
    with pytest.raises(DlqHeaderError, match="missing"):
        DlqHeaders.from_kafka(None)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(ERROR_CLASSES)),
    st.text(max_size=50),
    st.text(min_size=1, max_size=20),
    st.integers(0, 2**31),
    st.integers(0, 2**63 - 1),
    st.text(min_size=1, max_size=20),
    st.datetimes(timezones=st.just(UTC)),
)
def test_round_trip_property(
    code: str, message: str, topic: str, partition: int, offset: int, group: str, at: datetime
) -> None:
    h = headers(
        error_class=code,
        error_message=message,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        consumer_group=group,
        failed_at=at,
    )
    assert DlqHeaders.from_kafka(h.to_kafka()) == h
