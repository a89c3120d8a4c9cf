"""Bytes (or a Python dict) in, the typed wire Struct out: size limit, JSON decoding, structural validation.

Prediction events are decoded by orjson and then validated by msgspec (``convert``): the row's fields
the contract does not declare must be kept for the NDJSON sent to Labelbox, so the plain decoded dict
is needed anyway. Metric and label events declare every field and are decoded straight into their
Structs. Every failure becomes ``MessageTooLargeError`` (``too_large``), ``MalformedJsonError``
(``json``: not UTF-8 JSON, or not an object) or ``EventValidationError`` (``schema``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
import orjson

from service.errors import EventValidationError, MalformedJsonError, MessageTooLargeError
from service.events.errors import from_msgspec, type_name
from service.events.wire import (
    LABEL_EVENT_DECODER,
    METRIC_EVENT_DECODER,
    LabelEventWire,
    MetricEventWire,
    PredictionEventWire,
)

_loads = orjson.loads
_convert = msgspec.convert
_JSON_TYPES = {"array": "an array", "str": "a string", "null": "null", "int": "a number", "float": "a number",
               "bool": "a boolean"}


class _NonFinite:
    """Stands in for a NaN/Infinity literal so the error can say where it was."""


def _find_sentinel(value: Any, path: str) -> str | None:
    if isinstance(value, _NonFinite):
        return path or "value"
    if isinstance(value, dict):
        for k, v in value.items():
            found = _find_sentinel(v, f"{path}.{k}" if path else str(k))
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _find_sentinel(v, f"{path}[{i}]")
            if found:
                return found
    return None


def _not_json(raw: Any, detail: str) -> EventValidationError:
    """Why bytes are not JSON: bad UTF-8, a NaN/Infinity literal (named by field), or the decoder's words."""
    if isinstance(raw, bytes | bytearray | memoryview):
        data = bytes(raw)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as ude:
            bad = f"byte 0x{data[ude.start]:02x} at position {ude.start}"
            return MalformedJsonError("value", f"not valid UTF-8 ({bad})")
        # Producers using Python's json emit NaN/Infinity; name the field instead of "invalid JSON".
        try:
            obj = json.loads(data, parse_constant=lambda _: _NonFinite())
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict):
            where = _find_sentinel(obj, "")
            if where is not None:
                return EventValidationError(where, "must be a finite number (NaN and Infinity are not valid JSON)")
    return MalformedJsonError("value", f"not valid JSON: {detail}")


def _check_size(raw: Any, max_bytes: int) -> None:
    if raw is None:
        raise MalformedJsonError("value", "message has no value (a tombstone); expected a JSON object")
    if len(raw) > max_bytes:
        raise MessageTooLargeError(len(raw), max_bytes)


def load_object(raw: Any, max_bytes: int) -> dict[str, Any]:
    """orjson-decoded message that must be a JSON object."""
    _check_size(raw, max_bytes)
    try:
        obj = _loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _not_json(raw, str(exc)) from None
    except TypeError as exc:
        raise MalformedJsonError("value", f"expected bytes, got {type(raw).__name__}: {exc}") from None
    if type(obj) is not dict:
        raise MalformedJsonError("value", f"expected a JSON object, got {type_name(obj)}")
    return obj


def prediction_event(raw: Any, max_bytes: int) -> tuple[PredictionEventWire, dict[str, Any]]:
    doc = load_object(raw, max_bytes)
    try:
        return _convert(doc, PredictionEventWire), doc
    except msgspec.ValidationError as exc:
        raise from_msgspec(exc, PredictionEventWire, doc) from None


def _typed(decoder: Any, root: type, raw: Any, max_bytes: int) -> Any:
    _check_size(raw, max_bytes)
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        if msg.startswith("Number out of range"):  # 1e999: not a JSON number a double can hold
            try:
                _loads(raw)
            except orjson.JSONDecodeError as json_exc:
                raise _not_json(raw, str(json_exc)) from None
            raise MalformedJsonError("value", f"not valid JSON: {msg}") from None
        if msg.startswith("Expected `object`, got `") and " - at " not in msg:
            got = msg.split("`")[3]
            raise MalformedJsonError("value", f"expected a JSON object, got {_JSON_TYPES.get(got, got)}") from None
        try:
            doc = _loads(raw)
        except orjson.JSONDecodeError:
            raise MalformedJsonError("value", f"not valid JSON: {msg}") from None
        raise from_msgspec(exc, root, doc) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _not_json(raw, str(exc)) from None
    except TypeError as exc:
        raise MalformedJsonError("value", f"expected bytes, got {type(raw).__name__}: {exc}") from None


def metric_event(raw: Any, max_bytes: int) -> MetricEventWire:
    result: MetricEventWire = _typed(METRIC_EVENT_DECODER, MetricEventWire, raw, max_bytes)
    return result


def label_event(raw: Any, max_bytes: int) -> LabelEventWire:
    result: LabelEventWire = _typed(LABEL_EVENT_DECODER, LabelEventWire, raw, max_bytes)
    return result


# -------------------------------------------------------------------------------- Python dicts


def _find_non_finite(value: Any, path: str) -> str | None:
    """Path of the first NaN/inf in a Python value (JSON cannot carry them, so they must be named here)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        for k, v in value.items():
            found = _find_non_finite(v, f"{path}.{k}" if isinstance(k, str) and k.isidentifier() else f'{path}["{k}"]')
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = _find_non_finite(v, f"{path}[{i}]")
            if found:
                return found
    return None


def python_row(row: Any, root: type, path: str, what: str, *, non_str_keys: bool) -> tuple[Any, dict[str, Any]]:
    """A row given as a Python dict goes through JSON like a message, so it meets the same contract."""
    if not isinstance(row, dict):
        raise EventValidationError(path, f"must be an object ({what}), got {type_name(row)}")
    try:
        bad = _find_non_finite(row, path)
    except RecursionError:
        raise EventValidationError(path, "the row is nested too deeply") from None
    if bad is not None:
        raise EventValidationError(bad, "must be a finite number (NaN and infinity are not valid JSON)")
    try:
        doc = _loads(orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS if non_str_keys else None))
    except (orjson.JSONEncodeError, orjson.JSONDecodeError) as exc:
        raise EventValidationError(path, f"cannot be serialized as JSON: {exc}") from None
    try:
        return _convert(doc, root), doc
    except msgspec.ValidationError as exc:
        raise from_msgspec(exc, root, doc, path) from None
