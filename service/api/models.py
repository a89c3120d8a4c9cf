"""The request and response bodies of the HTTP API, as pydantic models.

One declaration per body: the handlers validate requests with them, the ops routes build their
responses through them, the tests check every response of the query routes against them, and
service.api.openapi derives the served OpenAPI document from their JSON Schemas. Response models
forbid undeclared fields, so a field a handler adds without declaring it fails the tests (and the
document's ``additionalProperties: false``) instead of reaching clients undocumented.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from service.events.constants import Aggregation

MAX_SLICE_ROWS = 10_000
MAX_ID_CHARS = 1024


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    """Strict: a handler's value of the wrong type (a number as text, a bool as a number) is an error."""

    model_config = ConfigDict(extra="forbid", strict=True)


# ---- requests


class Filter(_Request):
    """Data rows whose value of ``metric`` (at ``feature``/``subclass``, or the data row) is in range."""

    metric: str = Field(max_length=MAX_ID_CHARS)
    feature: str | None = Field(default=None, max_length=MAX_ID_CHARS)
    subclass: str | None = Field(default=None, max_length=MAX_ID_CHARS)
    confidence: float | None = Field(default=None, ge=0, le=1)
    min: float | None = Field(default=None, allow_inf_nan=False)
    max: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check(self) -> Filter:
        if self.subclass is not None and self.feature is None:
            raise ValueError("filter.subclass needs filter.feature")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("filter.min is greater than filter.max")
        return self


# A data row id in a slice: its bounds are checked by QueryBody._one (so the error names the
# index), declared here for the document.
_SliceId = Annotated[str, WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS})]


class QueryBody(_Request):
    """Exactly one of a slice (``data_row_ids``) or a ``filter``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            # "exactly one" counts non-null members: {"data_row_ids": null, "filter": {...}} is a filter
            "oneOf": [
                {"required": ["data_row_ids"], "properties": {"data_row_ids": {"type": "array"}}},
                {"required": ["filter"], "properties": {"filter": {"type": "object"}}},
            ],
        },
    )
    data_row_ids: list[_SliceId] | None = Field(default=None, min_length=1, max_length=MAX_SLICE_ROWS)
    filter: Filter | None = None

    @model_validator(mode="after")
    def _one(self) -> QueryBody:
        if (self.data_row_ids is None) == (self.filter is None):
            raise ValueError("give exactly one of data_row_ids or filter")
        for i, d in enumerate(self.data_row_ids or ()):
            if not d or len(d) > MAX_ID_CHARS:
                raise ValueError(f"data_row_ids[{i}] must be 1..{MAX_ID_CHARS} characters")
        return self


# ---- query responses


class ErrorDetail(_Response):
    status: int
    message: str


class Error(_Response):
    """Every 4xx/5xx answer of the API."""

    error: ErrorDetail


class ConfusionMatrix(_Response):
    """A confusion-matrix value with its ratios (null where a ratio's denominator is 0)."""

    tp: int
    fp: int
    tn: int
    fn: int
    precision: float | None
    recall: float | None
    f1: float | None


# null: no members, or a non-finite number
Value = float | ConfusionMatrix | None


class ConfidenceValue(_Response):
    confidence: float
    value: Value
    count: int


class SubclassValue(_Response):
    subclass: str
    value: Value
    count: int = Field(ge=0)
    confidence: list[ConfidenceValue]


class FeatureValue(_Response):
    feature: str
    value: Value
    count: int = Field(ge=0)
    confidence: list[ConfidenceValue]
    subclasses: list[SubclassValue]


class Metric(_Response):
    """One metric's aggregate at the level asked for, with its features and their subclasses."""

    metric: str
    aggregation: Aggregation
    value: Value
    count: int = Field(ge=0)
    confidence: list[ConfidenceValue]
    features: list[FeatureValue]


class ModelRun(_Response):
    id: str
    updated_at: float


class ModelRuns(_Response):
    model_runs: list[ModelRun]


class RunMetrics(_Response):
    model_run_id: str
    metrics: list[Metric]


class DataRowMetrics(_Response):
    model_run_id: str
    data_row_id: str
    data_rows: list[str]
    metrics: list[Metric]


class QueryResult(_Response):
    model_run_id: str
    data_row_count: int
    metrics: list[Metric]


# ---- ops responses


class Health(_Response):
    """/healthz and /readyz: the verdict and each consumer probe's answer ("ok" or why not)."""

    status: Literal["ok", "fail"]
    checks: dict[str, str]


class DlqEntry(_Response):
    error_class: str
    message: str
    source: str = Field(description="topic[partition]@offset of the original message")
    dlq_partition: int
    dlq_offset: int
    failed_at: str | None = Field(description="ISO-8601 UTC")


class RejectedModelRun(_Response):
    """A model run whose messages Labelbox rejects as a whole (dead-lettered by run)."""

    model_run_id: str
    messages: int
    reason: str
    last_at: str | None = Field(description="ISO-8601 UTC")


class DlqSummary(_Response):
    total: int
    by_class: dict[str, int]
    recent: list[DlqEntry]
    rejected_model_runs: list[RejectedModelRun]


class DlqCounts(_Response):
    total: int
    by_class: dict[str, int]


class GroupStatus(_Response):
    """A consumer group's gauges; a gauge this process does not export is absent."""

    group: str
    lag: float | None = Field(default=None, description="highwater minus committed, summed over partitions")
    lag_stored: float | None = Field(default=None, description="highwater minus processed")
    in_flight_batches: float | None = None
    buffered_bytes: float | None = None
    paused: float | None = None
    ready: float | None = None
    superseded_rows: float | None = None
    events: dict[str, float] = Field(description="input messages by outcome (delivered, applied, dlq, ...)")


class LabelboxCalls(_Response):
    requests_by_status: dict[str, float]
    errors: dict[str, dict[str, float]]


class PipelineStatus(_Response):
    groups: list[GroupStatus]
    imports: dict[str, float]
    retries: dict[str, float]
    labelbox: LabelboxCalls
    dlq_written_here: dict[str, float]
    dlq: DlqCounts | None


class Series(_Response):
    metric: str
    feature: str | None
    points: list[Annotated[list[float], Field(min_length=2, max_length=2)]] = Field(
        description="[unix time, value] pairs, oldest first"
    )


class History(_Response):
    model_run_id: str
    series: list[Series]


D = TypeVar("D")


def checked(model: type[_Response], doc: D) -> D:
    """``doc`` itself once it fits ``model`` (pydantic's ValidationError if not).

    The document is served as built, not re-serialized from the model: its numbers keep their
    JSON form (3, not 3.0) and keys it leaves out stay out.
    """
    model.model_validate(doc)
    return doc
