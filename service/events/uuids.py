"""Deterministic uuids, so that a replay re-sends the same uuid and Labelbox upserts instead of duplicating.

Both are RFC 4122 uuid5 values, the name being UTF-8 text:

* prediction row without ``uuid``: ``uuid5(PREDICTION_UUID_NAMESPACE, model_run_id + "\\n" +
  orjson.dumps(row_without_uuid, OPT_SORT_KEYS))`` over the *normalized* NDJSON row (camelCase keys,
  customMetric values as floats), so snake_case and camelCase spellings of one row agree;
* metric row without ``uuid``: ``uuid5(METRIC_UUID_NAMESPACE, orjson.dumps([model_run_id,
  data_row_key, metric_name, feature_name, subclass_name, metricValue]))``.
"""

from __future__ import annotations

import hashlib
from functools import partial
from typing import Any

import orjson

from service.events.constants import METRIC_UUID_NAMESPACE, PREDICTION_UUID_NAMESPACE

_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
_PREDICTION_NS = PREDICTION_UUID_NAMESPACE.bytes
_METRIC_NS = METRIC_UUID_NAMESPACE.bytes
_SORT = orjson.OPT_SORT_KEYS

def _sha1_factory() -> Any:
    """``hashlib.sha1``; under a FIPS policy, which refuses it, the non-security variant. The uuid is not
    a security use, but ``usedforsecurity=False`` makes OpenSSL look the digest up again on every call,
    twice the cost of the hash itself on these short names, so it is passed only where it is required."""
    try:
        hashlib.sha1(b"")
    except ValueError:
        return partial(hashlib.sha1, usedforsecurity=False)
    return hashlib.sha1


_sha1 = _sha1_factory()
_dumps = orjson.dumps


def uuid5_bytes(namespace_and_prefix: bytes, name: bytes) -> str:
    """Same value as ``str(uuid.uuid5(namespace, prefix + name))``, at half the cost."""
    h = _sha1(namespace_and_prefix + name).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def uuid5_text(h: Any) -> str:
    """The uuid5 text of a SHA-1 object that has hashed the namespace and the name."""
    x = h.hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


_PREFIX_HASHES: dict[str, Any] = {}
_PREFIX_HASHES_MAX = 4096  # model runs; a consumer sees a few at a time, so a full table is simply cleared
# The contract bounds a model run id only by the message size: longer ids are hashed, not kept, so the
# table stays a few hundred KiB whatever producers send.
_PREFIX_HASHES_MAX_ID = 256


def prediction_hasher(model_run_id: str) -> Any:
    """A SHA-1 object that has hashed ``prediction_prefix(model_run_id)``: ``.copy()`` and ``.update(name)``
    hash one row without concatenating the prefix again (kept per model run, as every row re-hashes it)."""
    h = _PREFIX_HASHES.get(model_run_id)
    if h is None:
        if len(model_run_id) > _PREFIX_HASHES_MAX_ID:
            return _sha1(prediction_prefix(model_run_id))
        if len(_PREFIX_HASHES) >= _PREFIX_HASHES_MAX:
            _PREFIX_HASHES.clear()
        h = _PREFIX_HASHES[model_run_id] = _sha1(prediction_prefix(model_run_id))
    return h


def prediction_prefix(model_run_id: str) -> bytes:
    """What every prediction uuid of one model run hashes first (computed once per event)."""
    return _PREDICTION_NS + model_run_id.encode() + b"\n"


def prediction_uuid(prefix: bytes, body: dict[str, Any]) -> str:
    """``body`` is the normalized NDJSON row without ``uuid``."""
    return uuid5_bytes(prefix, _dumps(body, option=_SORT))


def metric_uuid(
    model_run_id: str,
    data_row_key: str,
    metric_name: str | None,
    feature_name: str | None,
    subclass_name: str | None,
    ndjson_value: Any,
) -> str:
    name = _dumps([model_run_id, data_row_key, metric_name, feature_name, subclass_name, ndjson_value])
    return uuid5_bytes(_METRIC_NS, name)
