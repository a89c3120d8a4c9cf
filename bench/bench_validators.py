"""Benchmark: the two candidate compiled validators for the event contract, on our own events.

Both validate the structural part of the contract (types, required fields, enums, ranges, lengths,
unknown fields) straight from the message bytes, with no Python-level validator:

- ``msgspec``: the contract's Structs (service.events.wire) through ``msgspec.json.Decoder(type=...)``
  (prediction events: ``orjson.loads`` + ``msgspec.convert``, the path the service takes, since a
  prediction row's undeclared fields must be kept as a dict anyway);
- ``pydantic``: equivalent pydantic v2 models (both spellings via ``AliasChoices``, undeclared row fields
  kept with ``extra="allow"``) through ``TypeAdapter.validate_json`` — validated entirely in pydantic-core.

Each shape is timed against ``orjson.loads`` of the same bytes, interleaved, best of small batches,
median over rounds. The faster one that keeps our error messages is the one the service uses
(service/events; the result is recorded in bench/README.md).

Run: .venv/bin/python bench/bench_validators.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec
import orjson
from bench_parse import shapes
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, TypeAdapter

from service.events import wire

NonEmpty = Annotated[str, Field(min_length=1)]
Conf = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=0, le=10_000_000_000)] | Annotated[float, Field(ge=0, le=10_000_000_000, multiple_of=1)]
Matrix = tuple[Count, Count, Count, Count]
Value = float | Matrix | Annotated[dict[str, float | Matrix], Field(min_length=2, max_length=15)]


def _both(camel: str, snake: str) -> Any:
    return Field(default=None, validation_alias=AliasChoices(camel, snake))


class PDataRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: NonEmpty | None = None
    global_key: NonEmpty | None = _both("globalKey", "global_key")


class PCustomMetric(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    value: float


class PAnswer(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: NonEmpty | None = None
    schema_id: NonEmpty | None = _both("schemaId", "schema_id")
    confidence: Conf | None = None
    custom_metrics: list[PCustomMetric] | None = _both("customMetrics", "custom_metrics")
    classifications: list[PClassification] | None = None


class PClassification(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: NonEmpty | None = None
    schema_id: NonEmpty | None = _both("schemaId", "schema_id")
    answer: str | PAnswer | Annotated[list[PAnswer], Field(min_length=1)] | None = None
    custom_metrics: list[PCustomMetric] | None = _both("customMetrics", "custom_metrics")
    classifications: list[PClassification] | None = None


class PPredictionRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    data_row: PDataRow | None = _both("dataRow", "data_row")
    name: NonEmpty | None = None
    schema_id: NonEmpty | None = _both("schemaId", "schema_id")
    confidence: Conf | None = None
    custom_metrics: list[PCustomMetric] | None = _both("customMetrics", "custom_metrics")
    answer: str | PAnswer | Annotated[list[PAnswer], Field(min_length=1)] | None = None
    classifications: list[PClassification] | None = None
    uuid: Annotated[str, Field(pattern=wire.UUID_PATTERN)] | None = None


class PPredictionEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_run_id: NonEmpty | None = _both("modelRunId", "model_run_id")
    predictions: Annotated[list[PPredictionRow], Field(min_length=1)] | None = None
    prediction: PPredictionRow | None = None


class PMetricRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data_row: PDataRow | None = _both("dataRow", "data_row")
    metric_name: str | None = _both("metricName", "metric_name")
    feature_name: str | None = _both("featureName", "feature_name")
    subclass_name: str | None = _both("subclassName", "subclass_name")
    value: Value | None = _both("metricValue", "value")
    aggregation: Literal["ARITHMETIC_MEAN", "GEOMETRIC_MEAN", "HARMONIC_MEAN", "SUM", "CONFUSION_MATRIX"] | None = None
    uuid: Annotated[str, Field(pattern=wire.UUID_PATTERN)] | None = None


class PMetricEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_run_id: NonEmpty | None = _both("modelRunId", "model_run_id")
    metrics: Annotated[list[PMetricRow], Field(min_length=1)] | None = None


Selector = Annotated[list[NonEmpty], Field(min_length=1)]


class PLabelEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_run_id: NonEmpty | None = _both("modelRunId", "model_run_id")
    label_ids: Selector | None = _both("labelIds", "label_ids")
    project_id: NonEmpty | None = _both("projectId", "project_id")
    data_row_ids: Selector | None = _both("dataRowIds", "data_row_ids")
    global_keys: Selector | None = _both("globalKeys", "global_keys")


PYDANTIC = {
    "prediction": TypeAdapter(PPredictionEvent),
    "metric": TypeAdapter(PMetricEvent),
    "label": TypeAdapter(PLabelEvent),
}


def msgspec_validate(kind: str) -> Callable[[bytes], object]:
    if kind == "prediction":
        convert, loads, root = msgspec.convert, orjson.loads, wire.PredictionEventWire
        return lambda raw: convert(loads(raw), root)
    decoder = wire.METRIC_EVENT_DECODER if kind == "metric" else wire.LABEL_EVENT_DECODER
    return decoder.decode


def best(fn: Callable[[], object], batches: int = 15, n: int = 100) -> float:
    """Seconds per call: the best of ``batches`` batches of ``n`` calls (robust to a noisy machine)."""
    m = float("inf")
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        m = min(m, time.perf_counter() - t0)
    return m / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds per shape; the median counts")
    args = ap.parse_args()
    print(f"{'shape':<26}{'loads us':>10}{'msgspec us':>12}{'x loads':>9}{'pydantic us':>13}{'x loads':>9}")
    for name, kind, raw in shapes():
        ms = msgspec_validate(kind)
        pd = PYDANTIC[kind].validate_json
        ms(raw), pd(raw)  # both accept the shape
        loads_t, ms_t, pd_t = [], [], []
        for _ in range(args.rounds):
            loads_t.append(best(lambda raw=raw: orjson.loads(raw)))  # type: ignore[misc]
            ms_t.append(best(lambda raw=raw, ms=ms: ms(raw)))  # type: ignore[misc]
            pd_t.append(best(lambda raw=raw, pd=pd: pd(raw)))  # type: ignore[misc]
        lo, m, p = (statistics.median(x) * 1e6 for x in (loads_t, ms_t, pd_t))
        print(f"{name:<26}{lo:>10.3f}{m:>12.3f}{lo / m:>9.3f}{p:>13.3f}{lo / p:>9.3f}")
    print(f"x loads = orjson.loads time / validator time (higher is faster); command: "
          f".venv/bin/python bench/bench_validators.py --rounds {args.rounds}")


if __name__ == "__main__":
    main()
