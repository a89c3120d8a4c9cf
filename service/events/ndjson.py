"""A validated prediction row in Labelbox's NDJSON form: camelCase keys, customMetric values as floats.

Runs on rows the contract has already accepted, so it only rewrites; fields the contract does not
declare (geometry, masks, future annotation types) are copied as they are, in the producer's order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

_ALIASES = {"data_row": "dataRow", "schema_id": "schemaId", "custom_metrics": "customMetrics"}
_ALIAS_KEYS = frozenset(_ALIASES)
_NESTED = frozenset({"answer", "classifications", "customMetrics", *_ALIASES})


class CustomMetricLeaf(NamedTuple):
    """One customMetric of a prediction, placed at its node of the metric tree."""

    feature: str | None
    subclass: str | None
    name: str
    value: float


def _keys(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy with the snake_case aliases renamed in place (the checks rejected both spellings at once)."""
    if obj.keys().isdisjoint(_ALIAS_KEYS):
        return dict(obj)
    out: dict[str, Any] = {}
    for k, v in obj.items():
        k = _ALIASES.get(k, k)
        if v is not None or k not in out:  # null is absent: it never replaces the other spelling's value
            out[k] = v
    return out


def _custom_metrics(value: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``{"name", "value"}`` with a float value, in that key order; the common list is already so (reused)."""
    for cm in value:
        if type(cm["value"]) is not float or next(iter(cm)) != "name":
            return [{"name": cm["name"], "value": float(cm["value"])} for cm in value]
    return value


def _body(node: dict[str, Any]) -> None:
    """answer / customMetrics / nested classifications of a row or a nested classification, in place."""
    if "answer" in node:
        answer = node["answer"]
        if isinstance(answer, dict):
            node["answer"] = _answer(answer)
        elif isinstance(answer, list):
            node["answer"] = [_answer(a) for a in answer]
    if "customMetrics" in node:
        if node["customMetrics"] is None:
            del node["customMetrics"]
        else:
            node["customMetrics"] = _custom_metrics(node["customMetrics"])
    if "classifications" in node:
        node["classifications"] = [_classification(c) for c in node["classifications"]]


def _answer(node: dict[str, Any]) -> dict[str, Any]:
    out = _keys(node)
    if "customMetrics" in out:
        if out["customMetrics"] is None:
            del out["customMetrics"]
        else:
            out["customMetrics"] = _custom_metrics(out["customMetrics"])
    if "classifications" in out:
        out["classifications"] = [_classification(c) for c in out["classifications"]]
    return out


def _classification(node: dict[str, Any]) -> dict[str, Any]:
    out = _keys(node)
    _body(out)
    return out


def prediction_body(raw: dict[str, Any], data_row: dict[str, str], confidence: float | None) -> dict[str, Any]:
    """The normalized NDJSON row without ``uuid`` (what the deterministic uuid hashes)."""
    out = _keys(raw)
    out.pop("uuid", None)
    out["dataRow"] = data_row
    if out.get("name", 0) is None:
        del out["name"]
    if out.get("schemaId", 0) is None:
        del out["schemaId"]
    if confidence is None:
        out.pop("confidence", None)
    else:
        out["confidence"] = confidence
    if not out.keys().isdisjoint(_NESTED):
        _body(out)
    return out


# Keys whose presence means a row is never sent as produced (upload.py tests this inline on its hot path).
NOT_AS_IS = frozenset({"uuid", *_NESTED - {"customMetrics"}})


def is_normal(raw: dict[str, Any], data_row: dict[str, str], confidence: float | None) -> bool:
    """True when ``prediction_body(raw, data_row, confidence)`` equals ``raw`` key for key, in the same
    order and with the same value types (so the same JSON bytes): the common row, sent as produced,
    skips the rewrite. Only for rows the contract has accepted."""
    if not raw.keys().isdisjoint(NOT_AS_IS):
        return False
    dr = raw["dataRow"]
    if len(dr) != 1 or dr != data_row or raw.get("name", 0) is None or raw.get("schemaId", 0) is None:
        return False
    if confidence is None:
        if "confidence" in raw:
            return False
    elif type(raw.get("confidence")) is not float:
        return False
    if "customMetrics" in raw:
        cms = raw["customMetrics"]
        return cms is not None and _custom_metrics(cms) is cms
    return True


def _node_name(node: Mapping[str, Any]) -> str | None:
    name = node.get("name")
    return name if isinstance(name, str) else node.get("schemaId")


def collect_leaves(
    node: Mapping[str, Any], feature: str | None, subclass: str | None, out: list[CustomMetricLeaf]
) -> None:
    """Top-level customMetrics sit at the annotation's feature; answer ones at (question, answer)."""
    for cm in node.get("customMetrics") or ():
        out.append(CustomMetricLeaf(feature, subclass, cm["name"], cm["value"]))
    answer = node.get("answer")
    answers = [answer] if isinstance(answer, dict) else answer if isinstance(answer, list) else ()
    for ans in answers:
        # A top-level classification's answers are its nested features; deeper answers and nested
        # classifications all land on the nested-feature level of the top annotation (the tree has 3 levels).
        collect_leaves(ans, feature, _node_name(ans), out)
    for cls in node.get("classifications") or ():
        # A nested free-text classification carries its customMetrics itself: it is the nested feature.
        collect_leaves(cls, feature, _node_name(cls), out)
