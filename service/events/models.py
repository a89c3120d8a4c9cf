"""The typed results of parsing: events and rows as the aggregator, uploader and tools read them.

They are msgspec Structs built from rows the contract has accepted. What is derived rather than
given — a row's NDJSON form and its deterministic uuid — is computed on first use and kept, so a
consumer that never needs them (the aggregator for metric rows) never pays for them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, NamedTuple, TypeAlias

import orjson
from msgspec import Struct

from service.events.constants import DEFAULT_AGGREGATION, ConfusionMatrixValue, EventKind, ScalarAggregation
from service.events.ndjson import CustomMetricLeaf, collect_leaves, prediction_body
from service.events.uuids import metric_uuid, prediction_prefix, prediction_uuid
from service.events.wire import DataRowRef

__all__ = [
    "ConfusionMatrixMetricRow",
    "CustomMetricLeaf",
    "DataRowRef",
    "Event",
    "LabelEvent",
    "MetricEvent",
    "MetricRow",
    "PredictionEvent",
    "PredictionRow",
    "ScalarMetricRow",
    "UploadRows",
]


class PredictionRow(Struct, eq=False, gc=False):
    """One Labelbox NDJSON prediction row; ``ndjson`` is the full normalized row sent to Labelbox.

    Fields the contract does not model (geometry, answers, masks, ...) live only in ``ndjson`` and
    pass through unchanged, so new Labelbox annotation types need no change here.
    """

    data_row: DataRowRef
    name: str | None
    schema_id: str | None
    confidence: float | None
    is_mask: bool
    raw: dict[str, Any]  # the row as the producer sent it (validated)
    model_run_id: str
    given_uuid: str | None = None
    cached_ndjson: dict[str, Any] | None = None

    @property
    def ndjson(self) -> dict[str, Any]:
        nd = self.cached_ndjson
        if nd is None:
            body = prediction_body(self.raw, self.data_row.to_ndjson(), self.confidence)
            given = self.given_uuid
            row_uuid = given if given is not None else prediction_uuid(prediction_prefix(self.model_run_id), body)
            nd = self.cached_ndjson = {"uuid": row_uuid, **body}
        return nd

    @property
    def uuid(self) -> str:
        """The given uuid, or the deterministic one (module service.events.uuids)."""
        given = self.given_uuid
        return given if given is not None else str(self.ndjson["uuid"])

    def to_ndjson(self) -> dict[str, Any]:
        """The row in Labelbox field names, uuid included (a shallow copy: do not mutate nested values)."""
        return dict(self.ndjson)

    def custom_metric_leaves(self) -> list[CustomMetricLeaf]:
        """Top-level customMetrics sit at the annotation's feature; answer ones at (question, answer)."""
        feature = self.name if self.name is not None else self.schema_id
        leaves: list[CustomMetricLeaf] = []
        collect_leaves(self.ndjson, feature, None, leaves)
        return leaves

    def _key(self) -> tuple[Any, ...]:
        return (self.data_row, self.uuid, self.name, self.schema_id, self.confidence, self.is_mask, self.ndjson)

    def __eq__(self, other: object) -> bool:
        return type(other) is PredictionRow and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self.uuid)

    def __repr__(self) -> str:
        return (
            f"PredictionRow(data_row={self.data_row!r}, uuid={self.uuid!r}, name={self.name!r}, "
            f"schema_id={self.schema_id!r}, confidence={self.confidence!r}, is_mask={self.is_mask!r}, "
            f"ndjson={self.ndjson!r})"
        )


class _MetricRowBase(Struct, eq=False, gc=False):
    # Positional order (the checks build rows positionally, the cheapest call).
    data_row: DataRowRef
    feature_name: str | None = None
    subclass_name: str | None = None
    model_run_id: str = ""
    given_uuid: str | None = None
    cached_uuid: str | None = None

    metric_name: Any = None
    # The value as the contract accepted it: a number, a (TP, FP, TN, FN) tuple, or a confidence-keyed
    # dict whose keys are still the strings the producer wrote (validated: numbers in [0, 1], no
    # repeats). ``value`` gives the float-keyed form, built on first use: the uploader never needs it.
    checked_value: Any = None
    aggregation: Any = None
    cached_value: dict[float, Any] | None = None

    def upsert_key(self) -> tuple[str, str, str | None, str | None]:
        """Labelbox upserts metrics on this key; a legacy scalar metric without a name keys as ``""``."""
        return (self.data_row.key(), self.metric_name or "", self.feature_name, self.subclass_name)

    def ndjson_value(self) -> Any:
        raise NotImplementedError

    @property
    def value(self) -> Any:
        v = self.checked_value
        if isinstance(v, dict):
            return self.cached_value or self._keyed()
        return v

    def _keyed(self) -> dict[float, Any]:
        keyed = self.cached_value = {float(k): x for k, x in self.checked_value.items()}
        return keyed

    @property
    def uuid(self) -> str:
        """The given uuid, or the deterministic one (module service.events.uuids)."""
        u = self.given_uuid or self.cached_uuid
        if u is None:
            u = self.cached_uuid = metric_uuid(
                self.model_run_id,
                self.data_row.key(),
                self.metric_name,
                self.feature_name,
                self.subclass_name,
                self.ndjson_value(),
            )
        return u

    def to_ndjson(self) -> dict[str, Any]:
        """Labelbox NDJSON metric row: camelCase names, None fields left out, confidence keys as strings."""
        out: dict[str, Any] = {
            "uuid": self.uuid,
            "dataRow": self.data_row.to_ndjson(),
            "metricValue": self.ndjson_value(),
        }
        if self.metric_name is not None:
            out["metricName"] = self.metric_name
        if self.feature_name is not None:
            out["featureName"] = self.feature_name
        if self.subclass_name is not None:
            out["subclassName"] = self.subclass_name
        out["aggregation"] = self.aggregation
        return out

    def _key(self) -> tuple[Any, ...]:
        return (
            self.data_row,
            self.metric_name,
            self.feature_name,
            self.subclass_name,
            self.value,
            self.aggregation,
            self.uuid,
        )

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self.uuid)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(data_row={self.data_row!r}, metric_name={self.metric_name!r}, "
            f"feature_name={self.feature_name!r}, subclass_name={self.subclass_name!r}, value={self.value!r}, "
            f"aggregation={self.aggregation!r}, uuid={self.uuid!r})"
        )


class ScalarMetricRow(_MetricRowBase):
    """A ScalarMetric; ``value`` is a float or a confidence-keyed dict of floats."""

    kind: ClassVar[Literal["scalar"]] = "scalar"

    metric_name: str | None = None
    checked_value: float | dict[str, float] = 0.0
    aggregation: ScalarAggregation = DEFAULT_AGGREGATION

    def ndjson_value(self) -> Any:
        if isinstance(self.value, dict):
            return {str(k): v for k, v in self.value.items()}
        return self.value


class ConfusionMatrixMetricRow(_MetricRowBase):
    """A ConfusionMatrixMetric; ``value`` is ``(TP, FP, TN, FN)`` or a confidence-keyed dict of them."""

    kind: ClassVar[Literal["confusion_matrix"]] = "confusion_matrix"

    metric_name: str = ""
    checked_value: ConfusionMatrixValue | dict[str, ConfusionMatrixValue] = (0, 0, 0, 0)
    aggregation: Literal["CONFUSION_MATRIX"] = "CONFUSION_MATRIX"

    def ndjson_value(self) -> Any:
        if isinstance(self.value, dict):
            return {str(k): list(v) for k, v in self.value.items()}
        return list(self.value)


MetricRow: TypeAlias = ScalarMetricRow | ConfusionMatrixMetricRow


class _Event(Struct, frozen=True, gc=False):
    """What the three envelopes share: a wire form that parse_event reads back."""

    def to_wire(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_wire())


class PredictionEvent(_Event, frozen=True):
    """``{"model_run_id", "predictions": [row, ...]}`` (``"prediction": row`` is accepted on input)."""

    kind: ClassVar[EventKind] = "prediction"

    model_run_id: str
    predictions: list[PredictionRow]

    def to_wire(self) -> dict[str, Any]:
        """The event as it goes on the topic; ``parse_event`` of its JSON gives back an equal event."""
        return {"model_run_id": self.model_run_id, "predictions": [r.ndjson for r in self.predictions]}


class MetricEvent(_Event, frozen=True):
    """``{"model_run_id", "metrics": [metric, ...]}``; metrics in SDK snake_case or NDJSON camelCase."""

    kind: ClassVar[EventKind] = "metric"

    model_run_id: str
    metrics: list[MetricRow]

    def to_wire(self) -> dict[str, Any]:
        return {"model_run_id": self.model_run_id, "metrics": [m.to_ndjson() for m in self.metrics]}


class LabelEvent(_Event, frozen=True):
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


class UploadRows(NamedTuple):
    """A prediction or metric event reduced to what one import needs (the uploader keeps only this)."""

    model_run_id: str
    rows: list[tuple[str, str]]  # (uuid, data row key) per row, in payload order
    payload: bytes  # the rows' NDJSON lines joined by "\n", in an exact-size buffer
