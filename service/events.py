"""Event contracts (DESIGN §2): parse, validate and serialize prediction, metric and label events.

Validation is hand-written over the decoded dicts instead of pydantic validators: it runs on the
hot path (one call per Kafka message), it must name the exact field path the producer wrote
(``predictions[2].dataRow``) and it must never let anything but ``EventValidationError`` escape.
The pydantic models are the typed *result*; they are built from already-checked values, so
constructing them is cheap and their own type checks are only a safety net.

Deterministic uuids, so that a replay re-sends the same uuid and Labelbox upserts instead of
duplicating (both are RFC 4122 uuid5 values, the name being UTF-8 text):

* prediction row without ``uuid``: ``uuid5(PREDICTION_UUID_NAMESPACE, model_run_id + "\\n" +
  orjson.dumps(row_without_uuid, OPT_SORT_KEYS))`` over the *normalized* NDJSON row (camelCase keys,
  customMetric values as floats), so snake_case and camelCase spellings of one row agree;
* metric row without ``uuid``: ``uuid5(METRIC_UUID_NAMESPACE, orjson.dumps([model_run_id,
  data_row_key, metric_name, feature_name, subclass_name, metricValue]))``.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import uuid as _uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal, NamedTuple, TypeAlias, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from service.errors import EventValidationError, MalformedJsonError, MessageTooLargeError

__all__ = [
    "ANNOTATION_PER_LABEL_LIMIT",
    "CONFUSION_MATRIX_AGGREGATION",
    "MAX_CONFIDENCE_SCORES",
    "METRIC_UUID_NAMESPACE",
    "MIN_CONFIDENCE_SCORES",
    "PREDICTION_UUID_NAMESPACE",
    "RESERVED_METRIC_NAMES",
    "SCALAR_AGGREGATIONS",
    "ConfusionMatrixMetricRow",
    "ConfusionMatrixValue",
    "CustomMetricLeaf",
    "DataRowRef",
    "Event",
    "EventKind",
    "LabelEvent",
    "MetricEvent",
    "MetricRow",
    "PredictionEvent",
    "PredictionRow",
    "ScalarAggregation",
    "ScalarMetricRow",
    "UploadRows",
    "parse_event",
    "parse_metric_row",
    "parse_ndjson_row",
    "parse_prediction_row",
    "parse_upload",
]

EventKind = Literal["prediction", "metric", "label"]
ScalarAggregation = Literal["ARITHMETIC_MEAN", "GEOMETRIC_MEAN", "HARMONIC_MEAN", "SUM"]
ConfusionMatrixValue: TypeAlias = tuple[int, int, int, int]

SCALAR_AGGREGATIONS: frozenset[str] = frozenset({"ARITHMETIC_MEAN", "GEOMETRIC_MEAN", "HARMONIC_MEAN", "SUM"})
CONFUSION_MATRIX_AGGREGATION = "CONFUSION_MATRIX"
RESERVED_METRIC_NAMES: tuple[str, ...] = (
    "true_positive_count",
    "false_positive_count",
    "true_negative_count",
    "false_negative_count",
    "precision",
    "recall",
    "f1",
    "iou",
)
MIN_CONFIDENCE_SCORES = 2
MAX_CONFIDENCE_SCORES = 15
CONFUSION_MATRIX_MAX_COUNT = 10_000_000_000
ANNOTATION_PER_LABEL_LIMIT = 5000

PREDICTION_UUID_NAMESPACE = _uuid.UUID("5b0c3a4e-6f1d-4c62-9a57-2f4e1d0b7c11")
METRIC_UUID_NAMESPACE = _uuid.UUID("a3f1c2d4-8e5b-4b7a-9c3d-1e2f3a4b5c6d")

_MISSING: Any = object()
_SORT = orjson.OPT_SORT_KEYS


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
_PREDICTION_NS = PREDICTION_UUID_NAMESPACE.bytes
_METRIC_NS = METRIC_UUID_NAMESPACE.bytes
_sha1 = hashlib.sha1


def _uuid5(namespace: _uuid.UUID, name: bytes) -> str:
    """Same value as ``str(uuid.uuid5(namespace, name.decode()))``, at half the cost (hot path)."""
    return _uuid5_bytes(namespace.bytes, name)


def _uuid5_bytes(namespace: bytes, name: bytes) -> str:
    h = _sha1(namespace + name, usedforsecurity=False).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


# --------------------------------------------------------------------------------------------------
# Building the result models without re-validating them
#
# Every value is checked by hand before a model is built, so the hot path skips pydantic's
# validation: ``_build`` does what ``model_construct`` does (a real pydantic instance, equal to a
# validated one, every field given) at a fraction of the cost. ``values`` must hold every field of
# ``cls`` in declaration order, with exactly the types the annotations promise (exact ``str``,
# ``float``, ...); where an input may not (str subclasses from Python callers), the validating
# constructor is used instead, as before.

_M = TypeVar("_M", bound=BaseModel)
_object_new = object.__new__
_set = object.__setattr__


def _build(cls: type[_M], values: dict[str, Any], fields_set: set[str]) -> _M:
    obj = _object_new(cls)
    _set(obj, "__dict__", values)
    _set(obj, "__pydantic_fields_set__", fields_set)
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _fail(path: str, reason: str) -> EventValidationError:
    return EventValidationError(path, reason)


def _pick(obj: Mapping[str, Any], camel: str, snake: str, path: str) -> tuple[Any, str]:
    """One field accepted in two spellings; giving both is ambiguous, so it is an error."""
    c = obj.get(camel, _MISSING)
    s = obj.get(snake, _MISSING)
    if c is not _MISSING:
        if s is not _MISSING:
            field = f"{path}.{camel}" if path else camel
            raise _fail(field, f"given twice, as {camel} and {snake}; use one of them")
        return c, camel
    return s, snake


def _unknown_keys(path: str, keys: Iterable[str], allowed: Iterable[str], what: str) -> EventValidationError:
    """Name every unknown key (and a likely intended one) so a typo is not mistaken for absence."""
    allowed_list = sorted(allowed)
    unknown = sorted(str(k) for k in keys)
    first = unknown[0]
    guess = difflib.get_close_matches(first, allowed_list, n=1)
    hint = f" (did you mean {guess[0]}?)" if guess else ""
    others = f"; also unknown: {', '.join(unknown[1:])}" if len(unknown) > 1 else ""
    field = f"{path}.{first}" if path else first
    return _fail(field, f"unknown {what} field{hint}{others}; allowed: {', '.join(allowed_list)}")


def _non_empty_str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _fail(path, f"must be a non-empty string, got {_type_name(value)}")
    if not value.strip():
        raise _fail(path, "must be a non-empty string, got a blank one")
    return value


def _optional_str(value: Any, path: str) -> str | None:
    if value is None or value is _MISSING:
        return None
    if not isinstance(value, str):
        raise _fail(path, f"must be a string, got {_type_name(value)}")
    return value


def _finite_number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, f"must be a number, got {_type_name(value)}")
    try:
        f = float(value)
    except OverflowError:
        raise _fail(path, "must be a finite number, got an integer too large for a float") from None
    if not math.isfinite(f):
        raise _fail(path, f"must be a finite number, got {f}")
    return f


def _find_non_finite(value: Any, path: str) -> str | None:
    """Path of the first NaN/inf in a decoded-JSON tree (only needed for dicts not from orjson)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        for k, v in value.items():
            found = _find_non_finite(v, f"{path}.{k}")
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _find_non_finite(v, f"{path}[{i}]")
            if found:
                return found
    return None


def _all_finite(value: Any) -> bool:
    """True when a decoded-JSON tree holds no NaN/inf; the path-free twin of ``_find_non_finite``."""
    t = type(value)
    if t is dict:
        items: Iterable[Any] = value.values()
    elif t is list:
        items = value
    elif t is float:
        return bool(value - value == 0.0)
    elif t is str or t is int or t is bool or value is None:
        return True
    else:
        return _find_non_finite(value, "") is None
    for v in items:
        t = type(v)
        if t is str or t is int or v is None or t is bool:
            continue
        if t is float:
            if v - v != 0.0:
                return False
        elif not _all_finite(v):
            return False
    return True


# --------------------------------------------------------------------------------------------------
# Data row references


class DataRowRef(BaseModel):
    """A data row as the event names it; Labelbox needs exactly one of the two identifiers."""

    model_config = ConfigDict(frozen=True)

    id: str | None = None
    global_key: str | None = None

    def key(self) -> str:
        """Stable key for grouping and upserts: ``id:<id>`` or ``gk:<global key>``."""
        return f"id:{self.id}" if self.id is not None else f"gk:{self.global_key}"

    def to_ndjson(self) -> dict[str, str]:
        return {"id": self.id} if self.id is not None else {"globalKey": self.global_key or ""}


_DATA_ROW_KEYS = frozenset({"id", "globalKey", "global_key"})


_REF_ID_SET = {"id"}  # the fields_set of DataRowRef(id=...) and of DataRowRef(global_key=...)
_REF_GK_SET = {"global_key"}


def _ref_id(v: str) -> DataRowRef:
    return _build(DataRowRef, {"id": v, "global_key": None}, _REF_ID_SET)


def _ref_gk(v: str) -> DataRowRef:
    return _build(DataRowRef, {"id": None, "global_key": v}, _REF_GK_SET)


def _parse_data_row(value: Any, path: str) -> DataRowRef:
    if type(value) is dict and len(value) == 1:  # fast path: {"id": "..."} or {"globalKey": "..."}
        v = value.get("id")
        if type(v) is str and v and not v.isspace():
            return _ref_id(v)
        v = value.get("globalKey")
        if type(v) is str and v and not v.isspace():
            return _ref_gk(v)
    return _parse_data_row_slow(value, path)


def _parse_data_row_slow(value: Any, path: str) -> DataRowRef:
    if not isinstance(value, dict):
        raise _fail(path, f"must be an object with exactly one of id or globalKey, got {_type_name(value)}")
    if not value.keys() <= _DATA_ROW_KEYS:
        raise _unknown_keys(path, value.keys() - _DATA_ROW_KEYS, _DATA_ROW_KEYS, "dataRow")
    dr_id = value.get("id")
    gk, gk_name = _pick(value, "globalKey", "global_key", path)
    gk = None if gk is _MISSING else gk
    if dr_id is not None and gk is not None:
        raise _fail(path, "must have exactly one of id or globalKey, got both")
    if dr_id is not None:
        return DataRowRef(id=_non_empty_str(dr_id, f"{path}.id"))
    if gk is not None:
        return DataRowRef(global_key=_non_empty_str(gk, f"{path}.{gk_name}"))
    raise _fail(path, "must have exactly one of id or globalKey, got neither")


# --------------------------------------------------------------------------------------------------
# Prediction rows


class CustomMetricLeaf(NamedTuple):
    """One customMetric of a prediction, placed at its node of the metric tree (DESIGN §4)."""

    feature: str | None
    subclass: str | None
    name: str
    value: float


class PredictionRow(BaseModel):
    """One Labelbox NDJSON prediction row; ``ndjson`` is the full normalized row sent to Labelbox.

    Fields we do not model (geometry, answers, masks, ...) live only in ``ndjson`` and pass
    through unchanged, so new Labelbox annotation types need no change here.
    """

    model_config = ConfigDict(frozen=True)

    data_row: DataRowRef
    uuid: str
    name: str | None = None
    schema_id: str | None = None
    confidence: float | None = None
    is_mask: bool = False
    ndjson: dict[str, Any]

    def to_ndjson(self) -> dict[str, Any]:
        """The row in Labelbox field names, uuid included (a shallow copy: do not mutate nested values)."""
        return dict(self.ndjson)

    def custom_metric_leaves(self) -> list[CustomMetricLeaf]:
        """Top-level customMetrics sit at the annotation's feature; answer ones at (question, answer)."""
        feature = self.name if self.name is not None else self.schema_id
        leaves: list[CustomMetricLeaf] = []
        _collect_leaves(self.ndjson, feature, None, leaves)
        return leaves


def _node_name(node: Mapping[str, Any]) -> str | None:
    name = node.get("name")
    return name if isinstance(name, str) else node.get("schemaId")


def _collect_leaves(
    node: Mapping[str, Any], feature: str | None, subclass: str | None, out: list[CustomMetricLeaf]
) -> None:
    for cm in node.get("customMetrics") or ():
        out.append(CustomMetricLeaf(feature, subclass, cm["name"], cm["value"]))
    answer = node.get("answer")
    answers = [answer] if isinstance(answer, dict) else answer if isinstance(answer, list) else ()
    for ans in answers:
        # A top-level classification's answers are its nested features; deeper answers and nested
        # classifications all land on the nested-feature level of the top annotation (the tree has 3 levels).
        _collect_leaves(ans, feature, _node_name(ans), out)
    for cls in node.get("classifications") or ():
        # A nested free-text classification carries its customMetrics itself: it is the nested feature.
        _collect_leaves(cls, feature, _node_name(cls), out)


_PRED_ALIASES = {"data_row": "dataRow", "schema_id": "schemaId", "custom_metrics": "customMetrics"}
_CUSTOM_METRIC_KEYS = frozenset({"name", "value"})


_PRED_ALIAS_KEYS = frozenset(_PRED_ALIASES)


def _normalize_keys(obj: dict[str, Any], path: str) -> dict[str, Any]:
    """Copy with snake_case aliases mapped to Labelbox names; both spellings at once is an error."""
    if obj.keys().isdisjoint(_PRED_ALIAS_KEYS):
        return dict(obj)  # non-str keys (only possible from Python dicts) are caught by the JSON dump
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if not isinstance(k, str):
            raise _fail(path, f"keys must be strings, got {type(k).__name__}")
        ck = _PRED_ALIASES.get(k, k)
        if ck in out:
            raise _fail(f"{path}.{ck}", f"given twice, as {ck} and {k}; use one of them")
        out[ck] = v
    return out


def _parse_custom_metrics(value: Any, path: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _fail(path, f'must be a list of {{"name": str, "value": number}}, got {_type_name(value)}')
    out: list[dict[str, Any]] = []
    for i, cm in enumerate(value):
        p = f"{path}[{i}]"
        if not isinstance(cm, dict):
            raise _fail(p, f'must be an object {{"name": str, "value": number}}, got {_type_name(cm)}')
        if not cm.keys() <= _CUSTOM_METRIC_KEYS:
            raise _unknown_keys(p, cm.keys() - _CUSTOM_METRIC_KEYS, _CUSTOM_METRIC_KEYS, "customMetric")
        if "name" not in cm:
            raise _fail(f"{p}.name", "is required")
        name = cm["name"]
        if not isinstance(name, str):
            raise _fail(f"{p}.name", f"must be a string, got {_type_name(name)}")
        if "value" not in cm:
            raise _fail(f"{p}.value", "is required")
        v = cm["value"]
        out.append(
            {"name": name, "value": v if type(v) is float and math.isfinite(v) else _finite_number(v, p + ".value")}
        )
    return out


def _check_name_or_schema(node: dict[str, Any], path: str) -> None:
    name = node.get("name")
    schema_id = node.get("schemaId")
    if name is None and schema_id is None:
        raise _fail(path, "must have name or schemaId, got neither")
    if name is not None:
        _non_empty_str(name, f"{path}.name")
    if schema_id is not None:
        _non_empty_str(schema_id, f"{path}.schemaId")


def _check_confidence(value: Any, path: str) -> float:
    c = _finite_number(value, path)
    if not 0.0 <= c <= 1.0:
        raise _fail(path, f"must be between 0 and 1, got {c}")
    return c


def _normalize_answer_node(node: Any, path: str) -> dict[str, Any]:
    """A radio/checklist answer object: name or schemaId; its own confidence, customMetrics, nesting."""
    if not isinstance(node, dict):
        raise _fail(path, f"must be an object with name or schemaId, got {_type_name(node)}")
    out = _normalize_keys(node, path)
    _check_name_or_schema(out, path)
    if out.get("confidence") is not None:
        _check_confidence(out["confidence"], f"{path}.confidence")
    if "customMetrics" in out:
        if out["customMetrics"] is None:
            del out["customMetrics"]
        else:
            out["customMetrics"] = _parse_custom_metrics(out["customMetrics"], f"{path}.customMetrics")
    if "classifications" in out:
        out["classifications"] = _normalize_classifications(out["classifications"], f"{path}.classifications")
    return out


def _normalize_answer(answer: Any, path: str) -> Any:
    if isinstance(answer, str):
        return answer
    if isinstance(answer, dict):
        return _normalize_answer_node(answer, path)
    if isinstance(answer, list):
        if not answer:
            raise _fail(path, "a checklist answer must list at least one answer object")
        return [_normalize_answer_node(a, f"{path}[{i}]") for i, a in enumerate(answer)]
    raise _fail(
        path,
        f"must be a string (free text), an object (radio) or a list of objects (checklist), got {_type_name(answer)}",
    )


def _normalize_classifications(value: Any, path: str) -> list[dict[str, Any]]:
    """Nested classifications follow the same placement rules as top-level classification rows."""
    if not isinstance(value, list):
        raise _fail(path, f"must be a list of classification objects, got {_type_name(value)}")
    out: list[dict[str, Any]] = []
    for i, cls in enumerate(value):
        p = f"{path}[{i}]"
        if not isinstance(cls, dict):
            raise _fail(p, f"must be a classification object, got {_type_name(cls)}")
        norm = _normalize_keys(cls, p)
        _check_name_or_schema(norm, p)
        _normalize_classification_body(norm, p, is_mask=False)
        out.append(norm)
    return out


def _normalize_classification_body(row: dict[str, Any], path: str, *, is_mask: bool) -> None:
    """Validate answer / customMetrics / nested classifications of a row or nested classification, in place."""
    answer = row.get("answer", _MISSING)
    if answer is not _MISSING:
        row["answer"] = answer = _normalize_answer(answer, f"{path}.answer")
    if "customMetrics" in row:
        cms = row["customMetrics"]
        if cms is None:
            del row["customMetrics"]
        else:
            if is_mask:
                raise _fail(
                    f"{path}.customMetrics",
                    "custom metrics are not supported on raster segmentation (mask) rows; remove customMetrics",
                )
            if isinstance(answer, (dict, list)):
                raise _fail(
                    f"{path}.customMetrics",
                    "on a radio or checklist classification, customMetrics belong inside each answer, "
                    "not at the top level of the row",
                )
            row["customMetrics"] = _parse_custom_metrics(cms, f"{path}.customMetrics")
    if "classifications" in row:
        row["classifications"] = _normalize_classifications(row["classifications"], f"{path}.classifications")


def _parse_prediction(row: Any, model_run_id: str, path: str, *, trusted: bool) -> PredictionRow:
    fast = _fast_prediction(row, model_run_id, trusted=trusted)
    return fast if fast is not None else _parse_prediction_full(row, model_run_id, path, trusted=trusted)


def _parse_prediction_full(row: Any, model_run_id: str, path: str, *, trusted: bool) -> PredictionRow:
    if not isinstance(row, dict):
        raise _fail(path, f"must be an object (a Labelbox NDJSON prediction row), got {_type_name(row)}")
    out = _normalize_keys(row, path)
    data_row = out.get("dataRow", _MISSING)
    if data_row is _MISSING or data_row is None:
        raise _fail(f"{path}.dataRow", "is required")
    ref = _parse_data_row(data_row, f"{path}.dataRow")
    out["dataRow"] = ref.to_ndjson()

    name = out.get("name")
    schema_id = out.get("schemaId")
    if name is None and schema_id is None:
        raise _fail(path, "must have name or schemaId, got neither")
    if name is not None:
        _non_empty_str(name, f"{path}.name")
    else:
        out.pop("name", None)
    if schema_id is not None:
        _non_empty_str(schema_id, f"{path}.schemaId")
    else:
        out.pop("schemaId", None)

    confidence = out.get("confidence")
    if confidence is not None:
        confidence = out["confidence"] = _check_confidence(confidence, f"{path}.confidence")
    else:
        out.pop("confidence", None)

    is_mask = "mask" in out
    _normalize_classification_body(out, path, is_mask=is_mask)

    if not trusted and not _all_finite(out):
        for k, v in out.items():
            bad = _find_non_finite(v, f"{path}.{k}")
            if bad:
                raise _fail(bad, "must be a finite number (NaN and infinity are not valid JSON)")

    given_uuid = out.pop("uuid", None)
    if given_uuid is not None:
        row_uuid = _non_empty_str(given_uuid, f"{path}.uuid")
    else:
        try:
            content = orjson.dumps(out, option=_SORT)
            run = model_run_id.encode()
        except (orjson.JSONEncodeError, UnicodeEncodeError) as exc:
            raise _fail(path, f"cannot be serialized as JSON: {exc}") from None
        row_uuid = _uuid5_bytes(_PREDICTION_NS, run + b"\n" + content)
    ndjson = {"uuid": row_uuid, **out}
    if trusted and type(row_uuid) is str and type(name) in _STR_OR_NONE and type(schema_id) in _STR_OR_NONE:
        # Decoded by orjson: str keys, exact types; everything above is already checked.
        return _prediction_row(ref, row_uuid, name, schema_id, confidence, is_mask, ndjson)
    return PredictionRow(
        data_row=ref,
        uuid=row_uuid,
        name=name,
        schema_id=schema_id,
        confidence=confidence,
        is_mask=is_mask,
        ndjson=ndjson,
    )


_STR_OR_NONE = frozenset({str, type(None)})
_PREDICTION_ROW_FIELDS = {"data_row", "uuid", "name", "schema_id", "confidence", "is_mask", "ndjson"}


def _prediction_row(
    ref: DataRowRef,
    row_uuid: str,
    name: str | None,
    schema_id: str | None,
    confidence: float | None,
    is_mask: bool,
    ndjson: dict[str, Any],
) -> PredictionRow:
    return _build(
        PredictionRow,
        {
            "data_row": ref,
            "uuid": row_uuid,
            "name": name,
            "schema_id": schema_id,
            "confidence": confidence,
            "is_mask": is_mask,
            "ndjson": ndjson,
        },
        _PREDICTION_ROW_FIELDS,
    )


def _fast_prediction(
    row: Any, model_run_id: str, *, trusted: bool, uuid_prefix: bytes | None = None
) -> PredictionRow | None:
    """The common row (camelCase, no answer/classifications, plain types) in one pass; None: use the full path.

    Returns exactly what the full path returns for the same row, and never raises: anything
    unusual or invalid goes back to the full path, which names the error.
    """
    f = _fast_prediction_fields(row, trusted=trusted)
    if f is None:
        return None
    is_id, dr_value, name, schema_id, confidence, is_mask, out, given = f
    if given is not None:
        row_uuid = given
    else:
        try:
            content = orjson.dumps(out, option=_SORT)
            if uuid_prefix is None:
                uuid_prefix = _PREDICTION_NS + model_run_id.encode() + b"\n"
        except (orjson.JSONEncodeError, UnicodeEncodeError):
            return None
        row_uuid = _uuid5_bytes(uuid_prefix, content)
        out = {"uuid": row_uuid, **out}
    ref = _ref_id(dr_value) if is_id else _ref_gk(dr_value)
    return _prediction_row(ref, row_uuid, name, schema_id, confidence, is_mask, out)


_FastFields: TypeAlias = tuple[bool, str, str | None, str | None, float | None, bool, dict[str, Any], str | None]


def _fast_prediction_fields(row: Any, *, trusted: bool) -> _FastFields | None:
    """The checks and normalization of the fast path, shared by the model builder and the upload path.

    Returns (data row is an id, its value, name, schemaId, confidence, is_mask, the normalized row,
    the given uuid). The row starts with ``"uuid"`` when one was given and has no ``"uuid"`` otherwise.
    """
    if type(row) is not dict or not row.keys().isdisjoint(_FAST_PRED_EXCLUDED):
        return None
    dr = row.get("dataRow")
    if type(dr) is not dict or len(dr) != 1:
        return None
    v = dr.get("id")
    if type(v) is str and v and not v.isspace():
        is_id = True
        dr_nd: dict[str, str] = {"id": v}
    else:
        v = dr.get("globalKey")
        if type(v) is not str or not v or v.isspace():
            return None
        is_id = False
        dr_nd = {"globalKey": v}
    name = row.get("name")
    schema_id = row.get("schemaId")
    if name is None:
        if schema_id is None:
            return None
    elif type(name) is not str or not name or name.isspace():
        return None
    if schema_id is not None and (type(schema_id) is not str or not schema_id or schema_id.isspace()):
        return None
    confidence = row.get("confidence")
    if confidence is not None:
        if type(confidence) is int and 0 <= confidence <= 1:
            confidence = float(confidence)
        elif type(confidence) is not float or not 0.0 <= confidence <= 1.0:  # NaN fails the range test
            return None
    is_mask = "mask" in row
    cms = row.get("customMetrics", _MISSING)
    new_cms: list[dict[str, Any]] | None = None
    if cms is not _MISSING and cms is not None:
        if is_mask or type(cms) is not list:
            return None
        new_cms = []
        for cm in cms:
            if type(cm) is not dict or len(cm) != 2:
                return None
            n = cm.get("name")
            x = cm.get("value")
            if type(n) is not str:
                return None
            if type(x) is float:
                if x - x != 0.0:
                    return None
            elif type(x) is int and -_MAX_EXACT_INT <= x <= _MAX_EXACT_INT:
                x = float(x)
            else:
                return None
            new_cms.append({"name": n, "value": x})
    given = row.get("uuid")
    if given is not None and (type(given) is not str or not given or given.isspace()):
        return None
    if not trusted:
        try:
            for k, x in row.items():
                if type(k) is not str:
                    return None
                tx = type(x)
                if tx is str or tx is int or x is None or tx is bool or k in _FAST_PRED_CHECKED:
                    continue
                if tx is float:
                    if x - x != 0.0:
                        return None
                elif not _all_finite(x):
                    return None
        except RecursionError:
            return None

    out = {"uuid": given, **row}  # "uuid" first, as in the NDJSON row we send
    out["dataRow"] = dr_nd
    if name is None:
        out.pop("name", None)
    if schema_id is None:
        out.pop("schemaId", None)
    if confidence is None:
        out.pop("confidence", None)
    else:
        out["confidence"] = confidence
    if new_cms is not None:
        out["customMetrics"] = new_cms
    elif cms is None:
        del out["customMetrics"]
    if given is None:
        del out["uuid"]
    return is_id, v, name, schema_id, confidence, is_mask, out, given


# Rows with these keys take the full path: snake_case aliases, nested answers and classifications.
_FAST_PRED_EXCLUDED = frozenset({*_PRED_ALIASES, "answer", "classifications"})
_MAX_EXACT_INT = 2**53
# Fields the fast path has checked value by value already (so the NaN scan skips them).
_FAST_PRED_CHECKED = frozenset({"dataRow", "name", "schemaId", "confidence", "customMetrics", "uuid"})


# --------------------------------------------------------------------------------------------------
# Metric rows


class _MetricRowBase(BaseModel):
    model_config = ConfigDict(frozen=True)

    data_row: DataRowRef
    feature_name: str | None = None
    subclass_name: str | None = None
    uuid: str

    def upsert_key(self) -> tuple[str, str, str | None, str | None]:
        """Labelbox upserts metrics on this key; a legacy scalar metric without a name keys as ``""``."""
        name = getattr(self, "metric_name", None)
        return (self.data_row.key(), name or "", self.feature_name, self.subclass_name)

    def _ndjson_value(self) -> Any:
        raise NotImplementedError

    def to_ndjson(self) -> dict[str, Any]:
        """Labelbox NDJSON metric row: camelCase names, None fields left out, confidence keys as strings."""
        out: dict[str, Any] = {
            "uuid": self.uuid,
            "dataRow": self.data_row.to_ndjson(),
            "metricValue": self._ndjson_value(),
        }
        metric_name: str | None = getattr(self, "metric_name", None)
        if metric_name is not None:
            out["metricName"] = metric_name
        if self.feature_name is not None:
            out["featureName"] = self.feature_name
        if self.subclass_name is not None:
            out["subclassName"] = self.subclass_name
        out["aggregation"] = getattr(self, "aggregation")  # noqa: B009 - set by both subclasses
        return out


class ScalarMetricRow(_MetricRowBase):
    """A ScalarMetric; ``value`` is a float or a confidence-keyed dict of floats."""

    kind: ClassVar[Literal["scalar"]] = "scalar"

    metric_name: str | None = None
    value: float | dict[float, float]
    aggregation: ScalarAggregation = "ARITHMETIC_MEAN"

    def _ndjson_value(self) -> Any:
        if isinstance(self.value, dict):
            return {str(k): v for k, v in self.value.items()}
        return self.value


class ConfusionMatrixMetricRow(_MetricRowBase):
    """A ConfusionMatrixMetric; ``value`` is ``(TP, FP, TN, FN)`` or a confidence-keyed dict of them."""

    kind: ClassVar[Literal["confusion_matrix"]] = "confusion_matrix"

    metric_name: str
    value: ConfusionMatrixValue | dict[float, ConfusionMatrixValue]
    aggregation: Literal["CONFUSION_MATRIX"] = "CONFUSION_MATRIX"

    def _ndjson_value(self) -> Any:
        if isinstance(self.value, dict):
            return {str(k): list(v) for k, v in self.value.items()}
        return list(self.value)


MetricRow: TypeAlias = ScalarMetricRow | ConfusionMatrixMetricRow

_METRIC_FIELDS = (
    ("dataRow", "data_row"),
    ("metricName", "metric_name"),
    ("featureName", "feature_name"),
    ("subclassName", "subclass_name"),
    ("metricValue", "value"),
)
_METRIC_KEYS = frozenset({k for pair in _METRIC_FIELDS for k in pair} | {"aggregation", "uuid"})
_METRIC_CAMEL = ("dataRow", "metricName", "featureName", "subclassName", "metricValue")
_METRIC_SNAKE = ("data_row", "metric_name", "feature_name", "subclass_name", "value")
_CAMEL_METRIC_KEYS = frozenset({*_METRIC_CAMEL, "aggregation", "uuid"})
_SNAKE_METRIC_KEYS = frozenset({*_METRIC_SNAKE, "aggregation", "uuid"})


def _confidence_key(key: Any, path: str) -> float:
    if isinstance(key, bool):
        raise _fail(path, "confidence keys must be numbers in [0, 1], got a boolean")
    if isinstance(key, (int, float)):
        f = float(key) if isinstance(key, float) or abs(key) <= 2**53 else math.inf
    elif isinstance(key, str):
        try:
            f = float(key)
        except (ValueError, OverflowError):
            raise _fail(path, f"confidence keys must be numbers in [0, 1], got {key!r}") from None
    else:
        raise _fail(path, f"confidence keys must be numbers in [0, 1], got {_type_name(key)}")
    if not (math.isfinite(f) and 0.0 <= f <= 1.0):
        raise _fail(path, f"confidence keys must be numbers in [0, 1], got {key!r}")
    return f


def _confidence_dict(value: dict[Any, Any], path: str) -> list[tuple[float, Any, str]]:
    n = len(value)
    if not MIN_CONFIDENCE_SCORES <= n <= MAX_CONFIDENCE_SCORES:
        raise _fail(
            path,
            f"a confidence-keyed value needs between {MIN_CONFIDENCE_SCORES} and {MAX_CONFIDENCE_SCORES} keys, got {n}",
        )
    out: list[tuple[float, Any, str]] = []
    seen: set[float] = set()
    for k, v in value.items():
        f = _confidence_key(k, path)
        if f in seen:
            raise _fail(path, f"confidence key {k!r} repeats the confidence {f}")
        seen.add(f)
        out.append((f, v, f'{path}["{k}"]'))
    return out


def _cm_tuple(value: Any, path: str) -> ConfusionMatrixValue:
    if not isinstance(value, list | tuple) or len(value) != 4:
        got = f"{len(value)} elements" if isinstance(value, list | tuple) else _type_name(value)
        raise _fail(path, f"a confusion matrix value must be [TP, FP, TN, FN], 4 integers; got {got}")
    counts: list[int] = []
    for i, c in enumerate(value):
        p = f"{path}[{i}]"
        if isinstance(c, bool) or not isinstance(c, int | float):
            raise _fail(p, f"must be an integer count, got {_type_name(c)}")
        if isinstance(c, float):
            if not math.isfinite(c):
                raise _fail(p, f"must be a finite integer count, got {c}")
            if not c.is_integer():
                raise _fail(p, f"must be an integer count, got {c}")
            c = int(c)
        if not 0 <= c <= CONFUSION_MATRIX_MAX_COUNT:
            raise _fail(p, f"must be between 0 and 1e10, got {c}")
        counts.append(c)
    return (counts[0], counts[1], counts[2], counts[3])


def _is_cm_value(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return True
    if isinstance(value, dict):
        return any(isinstance(v, list | tuple) for v in value.values())
    return False


def _metric_names(row: dict[str, Any], path: str) -> tuple[str, str, str, str, str]:
    """Which spelling each field uses; a row in one style (the common case) costs two set tests."""
    keys = row.keys()
    if keys <= _CAMEL_METRIC_KEYS:
        return _METRIC_CAMEL
    if keys <= _SNAKE_METRIC_KEYS:
        return _METRIC_SNAKE
    if not keys <= _METRIC_KEYS:
        raise _unknown_keys(path, keys - _METRIC_KEYS, _METRIC_KEYS, "metric")
    # Mixed spellings; a missing field is named in the spelling the rest of the row uses.
    camel = "metricValue" in row or "dataRow" in row
    names: list[str] = []
    for c, sn in _METRIC_FIELDS:
        value, key = _pick(row, c, sn, path)
        names.append(key if value is not _MISSING else c if camel else sn)
    return (names[0], names[1], names[2], names[3], names[4])


def _parse_metric(row: Any, model_run_id: str, path: str) -> MetricRow:
    # Every metric field is checked explicitly, so untrusted input needs no extra NaN scan.
    fast = _fast_metric(row, model_run_id)
    return fast if fast is not None else _parse_metric_full(row, model_run_id, path)


_SCALAR_ROW_FIELDS = {"data_row", "feature_name", "subclass_name", "uuid", "metric_name", "value", "aggregation"}
_CM_ROW_FIELDS = _SCALAR_ROW_FIELDS
_CM_MAX = CONFUSION_MATRIX_MAX_COUNT


def _fast_metric_uuid(
    model_run_id: str, ref_key: Any, metric_name: Any, feature_name: Any, subclass_name: Any, value: Any
) -> str | None:
    """The documented metric uuid5 for the fast path; None sends the row to the full validator."""
    try:
        name = orjson.dumps([model_run_id, ref_key, metric_name, feature_name, subclass_name, value])
    except orjson.JSONEncodeError:
        return None
    return _uuid5_bytes(_METRIC_NS, name)


def _fast_metric(row: Any, model_run_id: str) -> MetricRow | None:
    """A metric row in one spelling with a plain number or [TP, FP, TN, FN] value; None: use the full path.

    Returns exactly what the full path returns for the same row, and never raises.
    """
    if type(row) is not dict:
        return None
    keys = row.keys()
    value: Any
    if keys <= _CAMEL_METRIC_KEYS:
        dr = row.get("dataRow")
        metric_name = row.get("metricName")
        feature_name = row.get("featureName")
        subclass_name = row.get("subclassName")
        value = row.get("metricValue")
    elif keys <= _SNAKE_METRIC_KEYS:
        dr = row.get("data_row")
        metric_name = row.get("metric_name")
        feature_name = row.get("feature_name")
        subclass_name = row.get("subclass_name")
        value = row.get("value")
    else:
        return None
    if type(dr) is not dict or len(dr) != 1:
        return None
    v = dr.get("id")
    if type(v) is str and v and not v.isspace():
        ref = _ref_id(v)
        ref_key = "id:" + v
    else:
        v = dr.get("globalKey")
        if type(v) is not str or not v or v.isspace():
            return None
        ref = _ref_gk(v)
        ref_key = "gk:" + v
    if (
        (metric_name is not None and type(metric_name) is not str)
        or (feature_name is not None and type(feature_name) is not str)
        or (subclass_name is not None and type(subclass_name) is not str)
    ):
        return None
    aggregation = row.get("aggregation")
    row_uuid = row.get("uuid")
    if row_uuid is not None and (type(row_uuid) is not str or not row_uuid or row_uuid.isspace()):
        return None
    tv = type(value)
    if tv is float or tv is int:
        if aggregation is None:
            aggregation = "ARITHMETIC_MEAN"
        elif type(aggregation) is not str or aggregation not in SCALAR_AGGREGATIONS:
            return None
        if metric_name is not None and metric_name.lower().strip() in RESERVED_METRIC_NAMES:
            return None
        if tv is int:
            if not -_MAX_EXACT_INT <= value <= _MAX_EXACT_INT:
                return None
            value = float(value)
        elif value - value != 0.0:
            return None
        if row_uuid is None:
            row_uuid = _fast_metric_uuid(model_run_id, ref_key, metric_name, feature_name, subclass_name, value)
            if row_uuid is None:
                return None
        return _build(
            ScalarMetricRow,
            {
                "data_row": ref,
                "feature_name": feature_name,
                "subclass_name": subclass_name,
                "uuid": row_uuid,
                "metric_name": metric_name,
                "value": value,
                "aggregation": aggregation,
            },
            _SCALAR_ROW_FIELDS,
        )
    if tv is list and len(value) == 4:
        if (aggregation is not None and aggregation != CONFUSION_MATRIX_AGGREGATION) or metric_name is None:
            return None
        tp, fp, tn, fn = value
        if not (
            type(tp) is int
            and type(fp) is int
            and type(tn) is int
            and type(fn) is int
            and 0 <= tp <= _CM_MAX
            and 0 <= fp <= _CM_MAX
            and 0 <= tn <= _CM_MAX
            and 0 <= fn <= _CM_MAX
        ):
            return None
        if row_uuid is None:
            row_uuid = _fast_metric_uuid(model_run_id, ref_key, metric_name, feature_name, subclass_name, value)
            if row_uuid is None:
                return None
        return _build(
            ConfusionMatrixMetricRow,
            {
                "data_row": ref,
                "feature_name": feature_name,
                "subclass_name": subclass_name,
                "uuid": row_uuid,
                "metric_name": metric_name,
                "value": (tp, fp, tn, fn),
                "aggregation": CONFUSION_MATRIX_AGGREGATION,
            },
            _CM_ROW_FIELDS,
        )
    return None


def _parse_metric_full(row: Any, model_run_id: str, path: str) -> MetricRow:
    if not isinstance(row, dict):
        raise _fail(path, f"must be an object (a ScalarMetric or ConfusionMatrixMetric), got {_type_name(row)}")
    dr_key, name_key, feature_key, sub_key, value_key = _metric_names(row, path)
    get = row.get
    dr = get(dr_key)
    if dr is None:
        raise _fail(f"{path}.{dr_key}", "is required")
    ref = _parse_data_row(dr, path + "." + dr_key)
    metric_name = get(name_key)
    if metric_name is not None and type(metric_name) is not str:
        _optional_str(metric_name, f"{path}.{name_key}")
    feature_name = get(feature_key)
    if feature_name is not None and type(feature_name) is not str:
        _optional_str(feature_name, f"{path}.{feature_key}")
    subclass_name = get(sub_key)
    if subclass_name is not None and type(subclass_name) is not str:
        _optional_str(subclass_name, f"{path}.{sub_key}")
    value = get(value_key)
    vpath = path + "." + value_key
    if value is None:
        raise _fail(vpath, "is required")
    aggregation = get("aggregation")
    if aggregation is not None and not isinstance(aggregation, str):
        raise _fail(f"{path}.aggregation", f"must be a string, got {_type_name(aggregation)}")
    given_uuid = get("uuid")
    row_uuid = _non_empty_str(given_uuid, f"{path}.uuid") if given_uuid is not None else None
    apath = "aggregation"

    metric: MetricRow
    if aggregation == CONFUSION_MATRIX_AGGREGATION or _is_cm_value(value):
        if aggregation is not None and aggregation != CONFUSION_MATRIX_AGGREGATION:
            raise _fail(
                f"{path}.{apath}", f"a confusion matrix metric only accepts CONFUSION_MATRIX, got {aggregation!r}"
            )
        if metric_name is None:
            raise _fail(f"{path}.{name_key}", "is required for a confusion matrix metric")
        cm_value: ConfusionMatrixValue | dict[float, ConfusionMatrixValue]
        if isinstance(value, dict):
            cm_value = {k: _cm_tuple(v, p) for k, v, p in _confidence_dict(value, vpath)}
        else:
            cm_value = _cm_tuple(value, vpath)
        ndjson_value: Any = (
            {str(k): list(v) for k, v in cm_value.items()} if isinstance(cm_value, dict) else list(cm_value)
        )
        if row_uuid is None:
            row_uuid = _metric_uuid(path, model_run_id, ref, metric_name, feature_name, subclass_name, ndjson_value)
        metric = ConfusionMatrixMetricRow(
            data_row=ref,
            metric_name=metric_name,
            feature_name=feature_name,
            subclass_name=subclass_name,
            value=cm_value,
            aggregation="CONFUSION_MATRIX",
            uuid=row_uuid,
        )
        return metric

    if aggregation is None:
        aggregation = "ARITHMETIC_MEAN"
    elif aggregation not in SCALAR_AGGREGATIONS:
        raise _fail(
            f"{path}.{apath}",
            f"must be one of ARITHMETIC_MEAN, GEOMETRIC_MEAN, HARMONIC_MEAN, SUM, got {aggregation!r}",
        )
    if metric_name is not None:
        clean = metric_name.lower().strip()
        if clean in RESERVED_METRIC_NAMES:
            raise _fail(
                f"{path}.{name_key}",
                f"{clean!r} is a reserved metric name (reserved: {', '.join(RESERVED_METRIC_NAMES)}); "
                "choose another name",
            )
    scalar: float | dict[float, float]
    if isinstance(value, dict):
        scalar = {k: _finite_number(v, p) for k, v, p in _confidence_dict(value, vpath)}
        ndjson_value = {str(k): v for k, v in scalar.items()}
    elif type(value) is float and math.isfinite(value):
        scalar = ndjson_value = value
    else:
        scalar = ndjson_value = _finite_number(value, vpath)
    if row_uuid is None:
        row_uuid = _metric_uuid(path, model_run_id, ref, metric_name, feature_name, subclass_name, ndjson_value)
    return ScalarMetricRow(
        data_row=ref,
        metric_name=metric_name,
        feature_name=feature_name,
        subclass_name=subclass_name,
        value=scalar,
        aggregation=aggregation,  # checked against SCALAR_AGGREGATIONS above
        uuid=row_uuid,
    )


def _metric_uuid(
    path: str,
    model_run_id: str,
    ref: DataRowRef,
    metric_name: str | None,
    feature_name: str | None,
    subclass_name: str | None,
    ndjson_value: Any,
) -> str:
    try:
        name = orjson.dumps([model_run_id, ref.key(), metric_name, feature_name, subclass_name, ndjson_value])
    except orjson.JSONEncodeError as exc:
        raise _fail(path, f"cannot be serialized as JSON: {exc}") from None
    return _uuid5_bytes(_METRIC_NS, name)


# --------------------------------------------------------------------------------------------------
# Events


class _Event(BaseModel):
    """What the three envelopes share: frozen, and a wire form that parse_event reads back."""

    model_config = ConfigDict(frozen=True)

    def to_wire(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_wire())


class PredictionEvent(_Event):
    """``{"model_run_id", "predictions": [row, ...]}`` (``"prediction": row`` is accepted on input)."""

    kind: ClassVar[EventKind] = "prediction"

    model_run_id: str
    predictions: list[PredictionRow]

    def to_wire(self) -> dict[str, Any]:
        """The event as it goes on the topic; ``parse_event`` of its JSON gives back an equal event."""
        return {"model_run_id": self.model_run_id, "predictions": [r.ndjson for r in self.predictions]}


class MetricEvent(_Event):
    """``{"model_run_id", "metrics": [metric, ...]}``; metrics in SDK snake_case or NDJSON camelCase."""

    kind: ClassVar[EventKind] = "metric"

    model_run_id: str
    metrics: list[MetricRow]

    def to_wire(self) -> dict[str, Any]:
        return {"model_run_id": self.model_run_id, "metrics": [m.to_ndjson() for m in self.metrics]}


class LabelEvent(_Event):
    """Mirrors ``ModelRun.upsert_labels`` / ``upsert_data_rows``: exactly one selector is set."""

    kind: ClassVar[EventKind] = "label"

    model_run_id: str
    label_ids: list[str] | None = None
    project_id: str | None = None
    data_row_ids: list[str] | None = None
    global_keys: list[str] | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_run_id": self.model_run_id}
        for field in ("label_ids", "project_id", "data_row_ids", "global_keys"):
            value = getattr(self, field)
            if value is not None:
                out[field] = value
        return out


Event: TypeAlias = PredictionEvent | MetricEvent | LabelEvent

_MRID = ("modelRunId", "model_run_id")
_PREDICTION_EVENT_KEYS = frozenset({*_MRID, "predictions", "prediction"})
_METRIC_EVENT_KEYS = frozenset({*_MRID, "metrics"})
_LABEL_SELECTORS = (
    ("labelIds", "label_ids"),
    ("projectId", "project_id"),
    ("dataRowIds", "data_row_ids"),
    ("globalKeys", "global_keys"),
)
_LABEL_EVENT_KEYS = frozenset({*_MRID, *(k for pair in _LABEL_SELECTORS for k in pair)})


_PREDICTION_EVENT_FIELDS = {"model_run_id", "predictions"}
_METRIC_EVENT_FIELDS = {"model_run_id", "metrics"}


def _model_run_id(obj: dict[str, Any]) -> str:
    value = obj.get("model_run_id")
    if type(value) is str and value and not value.isspace() and "modelRunId" not in obj:
        return value  # the common spelling, fast
    value, key = _pick(obj, "modelRunId", "model_run_id", "")
    if value is _MISSING or value is None:
        raise _fail("model_run_id", "is required (the Labelbox model run id)")
    return _non_empty_str(value, key)


def _parse_prediction_event(obj: dict[str, Any], *, trusted: bool) -> PredictionEvent:
    if not obj.keys() <= _PREDICTION_EVENT_KEYS:
        raise _unknown_keys("", obj.keys() - _PREDICTION_EVENT_KEYS, _PREDICTION_EVENT_KEYS, "prediction event")
    mrid = _model_run_id(obj)
    many = obj.get("predictions")
    one = obj.get("prediction")
    if many is not None and one is not None:
        raise _fail("predictions", "give either predictions (a list) or prediction (one row), not both")
    rows: list[PredictionRow]
    if many is not None:
        if not isinstance(many, list):
            raise _fail("predictions", f"must be a list of prediction rows, got {_type_name(many)}")
        if not many:
            raise _fail("predictions", "must not be empty")
        rows = []
        append = rows.append
        try:
            prefix: bytes | None = _PREDICTION_NS + mrid.encode() + b"\n"
        except UnicodeEncodeError:
            prefix = None  # each row reports it
        for i, r in enumerate(many):
            fast = _fast_prediction(r, mrid, trusted=trusted, uuid_prefix=prefix)
            append(
                fast if fast is not None else _parse_prediction_full(r, mrid, f"predictions[{i}]", trusted=trusted)
            )
        if len(rows) > ANNOTATION_PER_LABEL_LIMIT:
            _check_per_label_limit(rows)
    elif one is not None:
        rows = [_parse_prediction(one, mrid, "prediction", trusted=trusted)]
    else:
        raise _fail("predictions", "is required (a non-empty list of rows, or prediction with one row)")
    return _build(PredictionEvent, {"model_run_id": mrid, "predictions": rows}, _PREDICTION_EVENT_FIELDS)


def _check_per_label_limit(rows: list[PredictionRow]) -> None:
    counts: Counter[tuple[str, str]] = Counter()
    for i, row in enumerate(rows):
        if row.name is None:
            continue
        key = (row.data_row.key(), row.name)
        counts[key] += 1
        if counts[key] > ANNOTATION_PER_LABEL_LIMIT:
            raise _fail(
                f"predictions[{i}]",
                f"more than {ANNOTATION_PER_LABEL_LIMIT} rows for data row {key[0]} and name {key[1]!r} "
                "in one event (Labelbox's per-label annotation limit)",
            )


def _parse_metric_event(obj: dict[str, Any], *, trusted: bool) -> MetricEvent:
    if not obj.keys() <= _METRIC_EVENT_KEYS:
        raise _unknown_keys("", obj.keys() - _METRIC_EVENT_KEYS, _METRIC_EVENT_KEYS, "metric event")
    mrid = _model_run_id(obj)
    metrics = obj.get("metrics")
    if metrics is None:
        raise _fail("metrics", "is required (a non-empty list of metrics)")
    if not isinstance(metrics, list):
        raise _fail("metrics", f"must be a list of metrics, got {_type_name(metrics)}")
    if not metrics:
        raise _fail("metrics", "must not be empty")
    rows: list[MetricRow] = []
    append = rows.append
    for i, m in enumerate(metrics):
        fast = _fast_metric(m, mrid)
        append(fast if fast is not None else _parse_metric_full(m, mrid, f"metrics[{i}]"))
    return _build(MetricEvent, {"model_run_id": mrid, "metrics": rows}, _METRIC_EVENT_FIELDS)


def _string_list(value: Any, path: str) -> list[str]:
    if not isinstance(value, list):
        raise _fail(path, f"must be a list of strings, got {_type_name(value)}")
    if not value:
        raise _fail(path, "must not be empty")
    for i, s in enumerate(value):
        _non_empty_str(s, f"{path}[{i}]")
    return value


def _parse_label_event(obj: dict[str, Any]) -> LabelEvent:
    if not obj.keys() <= _LABEL_EVENT_KEYS:
        raise _unknown_keys("", obj.keys() - _LABEL_EVENT_KEYS, _LABEL_EVENT_KEYS, "label event")
    mrid = _model_run_id(obj)
    chosen: list[tuple[str, str, Any]] = []
    for camel, snake in _LABEL_SELECTORS:
        value, key = _pick(obj, camel, snake, "")
        if value is not _MISSING and value is not None:
            chosen.append((snake, key, value))
    if len(chosen) != 1:
        got = "none" if not chosen else ", ".join(k for _, k, _ in chosen)
        raise _fail(
            "label_ids" if not chosen else chosen[1][1],
            f"a label event needs exactly one of label_ids, project_id, data_row_ids, global_keys; got {got}",
        )
    field, key, value = chosen[0]
    # Decoded by orjson, so the checked values have exactly the annotated types.
    values: dict[str, Any] = {
        "model_run_id": mrid,
        "label_ids": None,
        "project_id": None,
        "data_row_ids": None,
        "global_keys": None,
    }
    values[field] = _non_empty_str(value, key) if field == "project_id" else _string_list(value, key)
    return _build(LabelEvent, values, {"model_run_id", field})


class _NonFinite:
    """Stands in for a NaN/Infinity literal so the slow path can say where it was."""


def _non_finite_literal_path(raw: bytes) -> str | None:
    """Producers using Python's json emit NaN/Infinity; name the field instead of 'invalid JSON'.

    Only runs after orjson rejected the message, so the hot path pays nothing.
    """
    import json

    try:
        obj = json.loads(raw, parse_constant=lambda _: _NonFinite())
    except (ValueError, RecursionError):
        return None
    return _find_sentinel(obj, "") if isinstance(obj, dict) else None


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


def _decode(raw: bytes | None, max_bytes: int) -> dict[str, Any]:
    if raw is None:
        raise MalformedJsonError("value", "message has no value (a tombstone); expected a JSON object")
    if len(raw) > max_bytes:
        raise MessageTooLargeError(len(raw), max_bytes)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if isinstance(raw, bytes | bytearray | memoryview):
            try:
                bytes(raw).decode("utf-8")
            except UnicodeDecodeError as ude:
                raise MalformedJsonError(
                    "value", f"not valid UTF-8 (byte 0x{bytes(raw)[ude.start]:02x} at position {ude.start})"
                ) from None
        non_finite = _non_finite_literal_path(bytes(raw))
        if non_finite is not None:
            raise _fail(non_finite, "must be a finite number (NaN and Infinity are not valid JSON)") from None
        raise MalformedJsonError("value", f"not valid JSON: {exc}") from None
    except TypeError as exc:
        raise MalformedJsonError("value", f"expected bytes, got {type(raw).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedJsonError("value", f"expected a JSON object, got {_type_name(obj)}")
    return obj


def parse_event(kind: EventKind, raw: bytes | None, *, max_bytes: int) -> PredictionEvent | MetricEvent | LabelEvent:
    """Size check, decode and validate one Kafka message value; every failure is an EventValidationError."""
    return _parse_decoded(kind, _decode(raw, max_bytes))


class UploadRows(NamedTuple):
    """A prediction or metric event reduced to what one import needs (the uploader keeps only this)."""

    model_run_id: str
    rows: list[tuple[str, str]]  # (uuid, data row key) per row, in payload order
    payload: bytes  # the rows' NDJSON lines joined by "\n", in an exact-size buffer


def parse_upload(kind: EventKind, raw: bytes | None, *, max_bytes: int) -> UploadRows | LabelEvent:
    """``parse_event`` for the uploader: the same validation, uuids and NDJSON bytes as
    ``orjson.dumps(row.to_ndjson())`` per row, without building the models for the common
    prediction event (one decoded dict in, bytes out; hot path). A label event is returned as is.
    """
    obj = _decode(raw, max_bytes)
    if kind == "prediction":
        fast = _fast_upload_predictions(obj)
        if fast is not None:
            return fast
    ev = _parse_decoded(kind, obj)
    if isinstance(ev, LabelEvent):
        return ev
    rows: list[tuple[str, str]] = []
    lines: list[bytes] = []
    if isinstance(ev, PredictionEvent):
        for p in ev.predictions:
            rows.append((p.uuid, p.data_row.key()))
            lines.append(orjson.dumps(p.ndjson))
    else:
        for m in ev.metrics:
            rows.append((m.uuid, m.data_row.key()))
            lines.append(orjson.dumps(m.to_ndjson()))
    return UploadRows(ev.model_run_id, rows, _exact(lines))


def _exact(lines: list[bytes]) -> bytes:
    """join() (or tobytes() for one line) copies into one exact-size buffer: orjson's own outputs keep
    ~1 KiB of capacity each, which made a 200-byte row cost 1.4 KiB while it waited in a batch."""
    return b"\n".join(lines) if len(lines) != 1 else memoryview(lines[0]).tobytes()


def _fast_upload_predictions(obj: dict[str, Any]) -> UploadRows | None:
    """The common prediction event straight to NDJSON bytes; None: take the full path (which names errors)."""
    mrid = obj.get("model_run_id")
    many = obj.get("predictions")
    if (type(mrid) is not str or not mrid or mrid.isspace() or type(many) is not list or not many
            or len(obj) != 2 or len(many) > ANNOTATION_PER_LABEL_LIMIT):
        return None
    try:
        prefix = _PREDICTION_NS + mrid.encode() + b"\n"
    except UnicodeEncodeError:
        return None
    rows: list[tuple[str, str]] = []
    lines: list[bytes] = []
    for r in many:
        f = _fast_prediction_fields(r, trusted=True)
        if f is None:
            return None
        is_id, dr_value, _, _, _, _, out, given = f
        try:
            if given is not None:
                row_uuid = given
                line = memoryview(orjson.dumps(out)).tobytes()
            else:
                row_uuid = _uuid5_bytes(prefix, orjson.dumps(out, option=_SORT))
                # == orjson.dumps({"uuid": row_uuid, **out}) (``out`` is never empty); the concatenation
                # is also the exact-size copy.
                line = b'{"uuid":"' + row_uuid.encode() + b'",' + orjson.dumps(out)[1:]
        except orjson.JSONEncodeError:
            return None
        rows.append((row_uuid, ("id:" if is_id else "gk:") + dr_value))
        lines.append(line)
    return UploadRows(mrid, rows, lines[0] if len(lines) == 1 else b"\n".join(lines))


def _parse_decoded(kind: EventKind, obj: dict[str, Any]) -> PredictionEvent | MetricEvent | LabelEvent:
    try:
        if kind == "prediction":
            return _parse_prediction_event(obj, trusted=True)
        if kind == "metric":
            return _parse_metric_event(obj, trusted=True)
        if kind == "label":
            return _parse_label_event(obj)
    except ValidationError as exc:  # a safety net: the hand checks above should have caught it first
        raise _from_pydantic(exc) from None
    except RecursionError:
        raise _fail("", "the event is nested too deeply") from None
    raise _fail("kind", f"unknown event kind {kind!r}; expected prediction, metric or label")


def _from_pydantic(exc: ValidationError) -> EventValidationError:
    err = exc.errors()[0]
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
    return EventValidationError(loc, err["msg"])


def parse_prediction_row(row: dict[str, Any], *, model_run_id: str, path: str = "prediction") -> PredictionRow:
    """Validate one Labelbox NDJSON prediction row given as a Python dict (NaN/inf are checked too)."""
    try:
        return _parse_prediction(row, model_run_id, path, trusted=False)
    except ValidationError as exc:
        raise _from_pydantic(exc) from None
    except RecursionError:
        raise _fail(path, "the row is nested too deeply") from None


def parse_metric_row(row: dict[str, Any], *, model_run_id: str, path: str = "metric") -> MetricRow:
    """Validate one metric row, SDK snake_case or NDJSON camelCase."""
    try:
        return _parse_metric(row, model_run_id, path)
    except ValidationError as exc:
        raise _from_pydantic(exc) from None


def parse_ndjson_row(row: dict[str, Any], *, model_run_id: str, path: str = "row") -> PredictionRow | MetricRow:
    """One line of a Labelbox NDJSON import: a row with ``metricValue`` is a metric, anything else a prediction."""
    if isinstance(row, dict) and "metricValue" in row:
        return parse_metric_row(row, model_run_id=model_run_id, path=path)
    return parse_prediction_row(row, model_run_id=model_run_id, path=path)
