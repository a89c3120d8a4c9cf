"""The query API over a real socket, on a SQLite store filled by the real aggregation path.

Events are raw JSON as producers send them; they go through ``service.events.parse_event``,
``consumers.aggregator.ops_from_event``, ``service.aggregation.apply_message`` on a
``CachedState`` and ``SqlStateBackend.commit`` — what the aggregator consumer does per message,
minus Kafka. Expected values come from tests/aggregate_reference.py (via the harness's
independent interpretation of the raw events), plus a few values worked out by hand below.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aggregator_harness import Reference, diff, flatten
from aiohttp import web
from pydantic import SecretStr
from row_uuid import row_uuid

from consumers.aggregator import ops_from_event
from service.aggregation import apply_message
from service.api.models import MAX_ID_CHARS, MAX_SLICE_ROWS
from service.api.query_api import MAX_BODY_BYTES, build_query_app
from service.config import Settings
from service.events import parse_event
from service.state import CachedState, SqlStateBackend

RUN = "qa-run"
OTHER_RUN = "qa-other"
TOKEN = "s3cret-token"
GROUP = "qa-aggregator"
TOPIC = "qa.metrics"


def _m(dr: dict[str, str], name: str, value: Any, aggregation: str, f: str | None = None, s: str | None = None) -> Any:
    row: dict[str, Any] = {"dataRow": dr, "metricName": name, "metricValue": value, "aggregation": aggregation}
    if f is not None:
        row["featureName"] = f
    if s is not None:
        row["subclassName"] = s
    return row


D1, D2, G3 = {"id": "d1"}, {"id": "d2"}, {"globalKey": "g3"}
DUP_ID, DUP_GK = {"id": "dup"}, {"globalKey": "dup"}

# (kind, body without model_run_id), in order. Two commits: the second batch starts from a fresh
# cache, so it reads (and replaces) what the first one stored.
BATCH_1: list[tuple[str, dict[str, Any]]] = [
    (
        "metric",
        {
            "metrics": [
                _m(D1, "am", 0.1, "ARITHMETIC_MEAN"),  # replaced by 0.5 in batch 2
                _m(D2, "am", 0.25, "ARITHMETIC_MEAN", "cat"),
                _m(D2, "am", 0.75, "ARITHMETIC_MEAN", "cat", "tall"),  # loses to cat's explicit 0.25
                _m(D2, "am", 1.0, "ARITHMETIC_MEAN", "dog"),
                _m(G3, "am", 0.5, "ARITHMETIC_MEAN", "cat", "tall"),
                _m(G3, "am", 0.1, "ARITHMETIC_MEAN", "cat", "short"),
                _m(DUP_ID, "am", 0.2, "ARITHMETIC_MEAN"),
                _m(DUP_GK, "am", 0.4, "ARITHMETIC_MEAN"),
            ]
        },
    ),
    (
        "metric",
        {
            "metrics": [
                _m(D1, "gm", 2.0, "GEOMETRIC_MEAN"),
                _m(D2, "gm", 8.0, "GEOMETRIC_MEAN"),
                _m(G3, "gm", 4.0, "GEOMETRIC_MEAN", "cat"),
                _m(D1, "hm", 1.0, "HARMONIC_MEAN"),
                _m(D2, "hm", 3.0, "HARMONIC_MEAN"),
                _m(G3, "hm", 6.0, "HARMONIC_MEAN", "cat"),
                _m(D1, "sum", 1.5, "SUM"),
                _m(D2, "sum", 2.5, "SUM"),
                _m(G3, "sum", 3.0, "SUM", "cat"),
            ]
        },
    ),
    (
        "prediction",
        {
            "predictions": [
                {
                    "uuid": row_uuid("p1"),
                    "dataRow": D1,
                    "name": "cat",
                    "bbox": {"top": 1, "left": 2, "height": 3, "width": 4},
                    "customMetrics": [{"name": "cam", "value": 0.1}],  # replaced as a whole in batch 2
                },
                {
                    "uuid": row_uuid("p2"),
                    "dataRow": G3,
                    "name": "cat",
                    "answer": {"name": "tall", "customMetrics": [{"name": "cam", "value": 0.6}]},
                },
            ]
        },
    ),
]
BATCH_2: list[tuple[str, dict[str, Any]]] = [
    (
        "metric",
        {
            "metrics": [
                _m(D1, "am", 0.5, "ARITHMETIC_MEAN"),
                _m(D1, "cm", [3, 1, 5, 2], "CONFUSION_MATRIX"),
                _m(D2, "cm", [0, 0, 7, 0], "CONFUSION_MATRIX", "cat"),  # precision/recall/F1 all undefined
                _m(G3, "cm", [0, 0, 4, 3], "CONFUSION_MATRIX"),  # precision undefined, recall = F1 = 0
                _m(D1, "overlap", {"0.5": 0.8, "0.9": 0.6}, "ARITHMETIC_MEAN"),
                _m(D2, "overlap", {"0.5": 0.4, "0.7": 0.3}, "ARITHMETIC_MEAN", "dog"),
                _m(D1, "cmc", {"0.5": [1, 0, 0, 1], "0.9": [0, 1, 0, 0]}, "CONFUSION_MATRIX"),
            ]
        },
    ),
    (
        "prediction",
        {
            "predictions": [
                {
                    "uuid": row_uuid("p1"),
                    "dataRow": D1,
                    "name": "dog",
                    "bbox": {"top": 1, "left": 2, "height": 3, "width": 4},
                    "customMetrics": [{"name": "cam", "value": 0.9}],
                }
            ]
        },
    ),
]
OTHER: list[tuple[str, dict[str, Any]]] = [
    ("metric", {"metrics": [_m(D1, "am", 1.0, "ARITHMETIC_MEAN")]}),
]


def _apply_batch(
    backend: SqlStateBackend, run: str, events: list[tuple[str, dict[str, Any]]], ref: Reference, first_offset: int
) -> int:
    """Apply events like the aggregator does and commit them with their offsets (one transaction)."""
    state = CachedState(backend)
    for i, (kind, body) in enumerate(events):
        raw = orjson.dumps({"model_run_id": run, **body})
        event = parse_event(kind, raw, max_bytes=1_000_000)  # type: ignore[arg-type]
        apply_message(state, ops_from_event(event))  # type: ignore[arg-type]
        ref.apply(first_offset + i, kind, body)
    assert not ref.rejected
    tp = (TOPIC, 0)
    stored = backend.load_offsets(GROUP, [tp]).get(tp)
    backend.commit(GROUP, state.take_changes(), {tp: first_offset + len(events)}, {tp: stored})
    return first_offset + len(events)


def populate(path: Path) -> Reference:
    """Fill a SQLite state store at ``path``; the Reference of RUN."""
    backend = SqlStateBackend.sqlite(path)
    try:
        ref = Reference()
        n = _apply_batch(backend, RUN, BATCH_1, ref, 0)
        _apply_batch(backend, RUN, BATCH_2, ref, n)
        _apply_batch(backend, OTHER_RUN, OTHER, Reference(), 100)
    finally:
        backend.close()
    return ref


# ---------------------------------------------------------------------------------------------
# server


@dataclass
class Api:
    url: str
    ref: Reference
    session: aiohttp.ClientSession

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.session.get(self.url + path, **kw) as r:
            return r.status, await _body(r)

    async def post(
        self,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
        **kw: Any,
    ) -> tuple[int, Any]:
        data = raw if raw is not None else orjson.dumps(body)
        headers = {"Content-Type": content_type, **kw.pop("headers", {})}
        async with self.session.post(self.url + path, data=data, headers=headers, **kw) as r:
            return r.status, await _body(r)

    async def query(self, body: Any, **kw: Any) -> tuple[int, Any]:
        return await self.post(f"/v1/model-runs/{RUN}/metrics/query", body, **kw)


async def _body(r: aiohttp.ClientResponse) -> Any:
    assert r.content_type == "application/json", (r.status, r.content_type, await r.text())
    return await r.json()


async def start_app(store: Path, token: str | None) -> tuple[web.AppRunner, SqlStateBackend, str]:
    backend = SqlStateBackend.sqlite(store)
    settings = Settings(_env_file=None, api_token=SecretStr(token) if token else None)  # type: ignore[call-arg]
    runner = web.AppRunner(build_query_app(backend, settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, backend, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Reference]]:
    path = tmp_path_factory.mktemp("query_api") / "state.sqlite3"
    yield path, populate(path)


async def _serve(store: tuple[Path, Reference], token: str | None) -> AsyncIterator[Api]:
    runner, backend, url = await start_app(store[0], token)
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(url, store[1], session)
    finally:
        await runner.cleanup()
        backend.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(store: tuple[Path, Reference]) -> AsyncIterator[Api]:
    async for served in _serve(store, None):
        yield served


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def secured(store: tuple[Path, Reference]) -> AsyncIterator[Api]:
    async for served in _serve(store, TOKEN):
        yield served


def _find(metrics: list[dict[str, Any]], name: str) -> dict[str, Any]:
    [m] = [m for m in metrics if m["metric"] == name]
    return m


def _feature(metric: dict[str, Any], name: str) -> dict[str, Any]:
    [f] = [f for f in metric["features"] if f["feature"] == name]
    return f


def _error_message(status: int, body: Any, expected_status: int) -> str:
    assert status == expected_status, body
    assert set(body) == {"error"} and body["error"]["status"] == expected_status, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message
    return message


# ---------------------------------------------------------------------------------------------
# reads


async def test_list_runs(api: Api) -> None:
    status, body = await api.get("/v1/model-runs")
    assert status == 200
    ids = [r["id"] for r in body["model_runs"]]
    assert ids == sorted([RUN, OTHER_RUN])
    for r in body["model_runs"]:
        assert isinstance(r["updated_at"], float) and r["updated_at"] > 1.6e9


async def test_run_metrics_match_recomputation(api: Api) -> None:
    status, body = await api.get(f"/v1/model-runs/{RUN}/metrics")
    assert status == 200 and body["model_run_id"] == RUN
    metrics = body["metrics"]
    assert [m["metric"] for m in metrics] == sorted(["am", "gm", "hm", "sum", "cm", "overlap", "cmc", "cam"])
    assert diff(flatten(metrics), api.ref.run_level()) == []

    # By hand (data-row values: d1, d2, g3 — explicit beats roll-up, roll-ups go subclass → feature → row).
    aggs = {m["metric"]: m["aggregation"] for m in metrics}
    assert aggs == {
        "am": "ARITHMETIC_MEAN",
        "gm": "GEOMETRIC_MEAN",
        "hm": "HARMONIC_MEAN",
        "sum": "SUM",
        "cm": "CONFUSION_MATRIX",
        "overlap": "ARITHMETIC_MEAN",
        "cmc": "CONFUSION_MATRIX",
        "cam": "ARITHMETIC_MEAN",  # customMetrics count as the arithmetic mean
    }
    gm, hm, total = _find(metrics, "gm"), _find(metrics, "hm"), _find(metrics, "sum")
    assert math.isclose(gm["value"], 4.0) and gm["count"] == 3  # (2·8·4)^(1/3)
    assert math.isclose(hm["value"], 2.0) and hm["count"] == 3  # 3 / (1 + 1/3 + 1/6)
    assert total["value"] == 7.0 and total["count"] == 3
    am = _find(metrics, "am")
    # d1 0.5 (the replacement), d2 = mean(cat 0.25 explicit, dog 1.0), g3 = cat = mean(0.5, 0.1), id:dup, gk:dup
    assert math.isclose(am["value"], (0.5 + 0.625 + 0.3 + 0.2 + 0.4) / 5) and am["count"] == 5
    cat = _feature(am, "cat")
    assert math.isclose(cat["value"], (0.25 + 0.3) / 2) and cat["count"] == 2
    assert [(s["subclass"], s["value"], s["count"]) for s in cat["subclasses"]] == [
        ("short", 0.1, 1),
        ("tall", (0.75 + 0.5) / 2, 2),
    ]
    # confusion matrix: element-wise sum, ratios null where undefined
    cm = _find(metrics, "cm")
    assert cm["value"] == {"tp": 3, "fp": 1, "tn": 16, "fn": 5, "precision": 0.75, "recall": 0.375, "f1": 0.5}
    assert _feature(cm, "cat")["value"] == {
        "tp": 0,
        "fp": 0,
        "tn": 7,
        "fn": 0,
        "precision": None,
        "recall": None,
        "f1": None,
    }
    # confidence-keyed values aggregate per confidence key
    overlap = _find(metrics, "overlap")
    assert overlap["value"] is None and overlap["count"] == 0
    assert [(c["confidence"], c["value"], c["count"]) for c in overlap["confidence"]] == [
        (0.5, pytest.approx(0.6), 2),  # d1 0.8, d2 0.4 (rolled up from dog)
        (0.7, 0.3, 1),
        (0.9, 0.6, 1),
    ]
    cmc = _find(metrics, "cmc")
    assert cmc["confidence"] == [
        {
            "confidence": 0.5,
            "count": 1,
            "value": {"tp": 1, "fp": 0, "tn": 0, "fn": 1, "precision": 1.0, "recall": 0.5, "f1": 2 / 3},
        },
        {
            "confidence": 0.9,
            "count": 1,
            "value": {"tp": 0, "fp": 1, "tn": 0, "fn": 0, "precision": 0.0, "recall": None, "f1": 0.0},
        },
    ]
    # the re-sent prediction p1 replaced its customMetric (moved from cat to dog)
    cam = _find(metrics, "cam")
    assert [(f["feature"], f["value"]) for f in cam["features"]] == [("cat", 0.6), ("dog", 0.9)]


@pytest.mark.parametrize(
    ("asked", "rows"),
    [
        ("d1", ["id:d1"]),
        ("id:d1", ["id:d1"]),
        ("g3", ["gk:g3"]),
        ("gk:g3", ["gk:g3"]),
        ("dup", ["gk:dup", "id:dup"]),  # bare: either form, both exist
        ("id:dup", ["id:dup"]),
    ],
)
async def test_data_row_metrics(api: Api, asked: str, rows: list[str]) -> None:
    status, body = await api.get(f"/v1/model-runs/{RUN}/data-rows/{asked}/metrics")
    assert status == 200, body
    assert body["model_run_id"] == RUN and body["data_row_id"] == asked and body["data_rows"] == rows
    assert diff(flatten(body["metrics"]), api.ref.run_level(rows)) == []


async def test_data_row_values_by_hand(api: Api) -> None:
    _, body = await api.get(f"/v1/model-runs/{RUN}/data-rows/gk:g3/metrics")
    am = _find(body["metrics"], "am")
    assert math.isclose(am["value"], 0.3)  # rolled up from cat = mean(tall 0.5, short 0.1)
    assert _find(body["metrics"], "cm")["value"] == {
        "tp": 0,
        "fp": 0,
        "tn": 4,
        "fn": 3,
        "precision": None,
        "recall": 0.0,
        "f1": 0.0,
    }


async def test_slice(api: Api) -> None:
    status, body = await api.query({"data_row_ids": ["d1", "gk:g3", "no-such-row", "id:d1"]})
    assert status == 200, body
    assert body["model_run_id"] == RUN and body["data_row_count"] == 2
    assert diff(flatten(body["metrics"]), api.ref.run_level(["id:d1", "gk:g3"])) == []
    gm = _find(body["metrics"], "gm")
    assert math.isclose(gm["value"], math.sqrt(2.0 * 4.0)) and gm["count"] == 2

    status, body = await api.query({"data_row_ids": ["nothing-here"]})
    assert status == 200 and body["data_row_count"] == 0 and body["metrics"] == []


async def test_slice_names_a_row_twice_across_chunks(api: Api) -> None:
    """A data row named twice, far apart in a long list (the store reads the keys in chunks):
    its values count once."""
    ids = ["d1", *(f"pad-{i}" for i in range(700)), "id:d1", "gk:g3", "g3"]
    status, body = await api.query({"data_row_ids": ids})
    assert status == 200, body
    assert body["data_row_count"] == 2
    assert diff(flatten(body["metrics"]), api.ref.run_level(["id:d1", "gk:g3"])) == []


def _filtered_rows(
    ref: Reference, metric: str, ck: str, f: str | None, s: str | None, lo: float | None, hi: float | None
) -> list[str]:
    """Data rows whose node (metric, ck, f, s) value — F1 for a confusion matrix — is in [lo, hi]."""
    out = []
    for (m, c, dr, nf, ns), v in ref.nodes().items():
        if (m, c, nf, ns) != (metric, ck, f, s) or v is None:
            continue
        if isinstance(v, tuple):
            tp, fp, _tn, fn = v
            if not 2 * tp + fp + fn:
                continue
            v = 2 * tp / (2 * tp + fp + fn)
        if (lo is None or v >= lo) and (hi is None or v <= hi):
            out.append(dr)
    return out


@pytest.mark.parametrize(
    ("flt", "expected_rows"),
    [
        ({"metric": "am", "min": 0.3, "max": 0.5}, ["id:d1", "gk:g3", "gk:dup"]),
        ({"metric": "am"}, ["id:d1", "id:d2", "gk:g3", "id:dup", "gk:dup"]),
        ({"metric": "am", "feature": "cat", "max": 0.26}, ["id:d2"]),
        ({"metric": "am", "feature": "cat", "subclass": "tall", "min": 0.6}, ["id:d2"]),
        ({"metric": "overlap", "confidence": 0.5, "min": 0.5}, ["id:d1"]),
        ({"metric": "overlap", "confidence": 0.9}, ["id:d1"]),
        ({"metric": "gm", "min": 3, "max": 3.5}, []),
        ({"metric": "cm", "min": 0.1}, ["id:d1"]),  # by F1: d1 6/9; g3 0; d2 undefined (never matches)
        ({"metric": "hm", "feature": "dog"}, []),
    ],
)
async def test_filter(api: Api, flt: dict[str, Any], expected_rows: list[str]) -> None:
    ref_rows = _filtered_rows(
        api.ref,
        flt["metric"],
        repr(float(flt["confidence"])) if "confidence" in flt else "",
        flt.get("feature"),
        flt.get("subclass"),
        flt.get("min"),
        flt.get("max"),
    )
    assert sorted(ref_rows) == sorted(expected_rows)  # the hand-worked selection agrees with the reference
    status, body = await api.query({"filter": flt})
    assert status == 200, body
    assert body["data_row_count"] == len(expected_rows)
    assert diff(flatten(body["metrics"]), api.ref.run_level(expected_rows)) == []


async def test_unknown_run_and_row_are_404(api: Api) -> None:
    for status, body in [
        await api.get("/v1/model-runs/no-such-run/metrics"),
        await api.get("/v1/model-runs/no-such-run/data-rows/d1/metrics"),
        await api.post("/v1/model-runs/no-such-run/metrics/query", {"data_row_ids": ["d1"]}),
    ]:
        assert "no-such-run" in _error_message(status, body, 404)
    status, body = await api.get(f"/v1/model-runs/{RUN}/data-rows/gk:d1/metrics")  # d1 is an id, not a key
    assert "gk:d1" in _error_message(status, body, 404)
    status, body = await api.get("/v1/nothing-here")
    _error_message(status, body, 404)
    status, body = await api.post(f"/v1/model-runs/{RUN}/metrics", {})
    _error_message(status, body, 405)


# ---------------------------------------------------------------------------------------------
# bad queries: 4xx, JSON, and the message names the problem


BAD_BODIES: list[tuple[str, bytes, int, list[str]]] = [
    ("malformed json", b'{"data_row_ids": ["d1"', 400, ["invalid json"]),
    ("empty body", b"", 400, ["invalid json"]),
    ("not an object", b'["d1"]', 400, ["body", "object"]),
    ("ids not a list", b'{"data_row_ids": "d1"}', 400, ["data_row_ids", "array"]),
    ("id not a string", b'{"data_row_ids": ["d1", 7]}', 400, ["data_row_ids.1", "string"]),
    ("filter not an object", b'{"filter": 3}', 400, ["filter"]),
    ("metric not a string", b'{"filter": {"metric": 5}}', 400, ["filter.metric", "string"]),
    ("min not a number", b'{"filter": {"metric": "am", "min": "low"}}', 400, ["filter.min", "number"]),
    ("min not finite", b'{"filter": {"metric": "am", "min": 1e999}}', 400, ["filter.min", "finite"]),
    ("both slice and filter", b'{"data_row_ids": ["d1"], "filter": {"metric": "am"}}', 400, ["exactly one"]),
    ("neither", b"{}", 400, ["exactly one"]),
    ("empty slice", b'{"data_row_ids": []}', 400, ["data_row_ids", "at least 1"]),
    ("empty id", b'{"data_row_ids": [""]}', 400, ["data_row_ids[0]"]),
    ("id too long", orjson.dumps({"data_row_ids": ["x" * (MAX_ID_CHARS + 1)]}), 400, ["data_row_ids[0]"]),
    (
        "oversized slice",
        orjson.dumps({"data_row_ids": [f"r{i}" for i in range(MAX_SLICE_ROWS + 1)]}),
        400,
        ["data_row_ids", "at most 10000"],
    ),
    ("unknown top-level key", b'{"data_row_ids": ["d1"], "limit": 3}', 400, ["limit", "extra"]),
    ("unknown filter key", b'{"filter": {"metric": "am", "above": 0.5}}', 400, ["filter.above", "extra"]),
    ("filter without metric", b'{"filter": {"min": 0.5}}', 400, ["filter.metric", "required"]),
    ("min > max", b'{"filter": {"metric": "am", "min": 0.9, "max": 0.1}}', 400, ["min is greater than", "max"]),
    ("confidence out of range", b'{"filter": {"metric": "overlap", "confidence": 1.5}}', 400, ["filter.confidence"]),
    ("subclass without feature", b'{"filter": {"metric": "am", "subclass": "tall"}}', 400, ["subclass needs"]),
    ("unknown metric", b'{"filter": {"metric": "nope"}}', 400, ["filter.metric", "'nope'"]),
    ("lone surrogate", b'{"data_row_ids": ["\\ud800"]}', 400, ["invalid json"]),
    ("not utf-8", b'{"data_row_ids": ["\xff"]}', 400, ["invalid json"]),
]


@pytest.mark.parametrize(("raw", "status", "words"), [b[1:] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES])
async def test_bad_query_bodies(api: Api, raw: bytes, status: int, words: list[str]) -> None:
    got, body = await api.query(None, raw=raw)
    message = _error_message(got, body, status).lower()
    for w in words:
        assert w.lower() in message, message


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
async def test_wrong_content_type_is_415(api: Api, content_type: str) -> None:
    status, body = await api.query({"data_row_ids": ["d1"]}, content_type=content_type)
    assert content_type in _error_message(status, body, 415)


async def test_json_with_charset_is_accepted(api: Api) -> None:
    status, _ = await api.query({"data_row_ids": ["d1"]}, content_type="application/json; charset=utf-8")
    assert status == 200


async def test_body_over_limit_is_413(api: Api) -> None:
    big = orjson.dumps({"data_row_ids": ["x" * 1000] * (MAX_BODY_BYTES // 1000 + 10)})
    assert len(big) > MAX_BODY_BYTES
    status, body = await api.query(None, raw=big)  # with Content-Length
    assert str(MAX_BODY_BYTES) in _error_message(status, body, 413)

    async def chunks() -> AsyncIterator[bytes]:  # chunked: no Content-Length to check up front
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    async with api.session.post(
        f"{api.url}/v1/model-runs/{RUN}/metrics/query", data=chunks(), headers={"Content-Type": "application/json"}
    ) as r:
        status, body = r.status, await _body(r)
    assert str(MAX_BODY_BYTES) in _error_message(status, body, 413)

    # just under the limit is processed (and is a valid 10k-id slice)
    ok = orjson.dumps({"data_row_ids": [f"{i:090d}" for i in range(MAX_SLICE_ROWS)]})
    assert len(ok) <= MAX_BODY_BYTES
    status, body = await api.query(None, raw=ok)
    assert status == 200 and body["data_row_count"] == 0


async def test_bad_path_parameters(api: Api) -> None:
    long = "r" * (MAX_ID_CHARS + 1)
    for status, body in [
        await api.get(f"/v1/model-runs/{long}/metrics"),
        await api.get(f"/v1/model-runs/{long}/data-rows/d1/metrics"),
        await api.post(f"/v1/model-runs/{long}/metrics/query", {"data_row_ids": ["d1"]}),
    ]:
        assert "path parameter run" in _error_message(status, body, 400)
    status, body = await api.get(f"/v1/model-runs/{RUN}/data-rows/{long}/metrics")
    assert "path parameter dr" in _error_message(status, body, 400)
    # ids that are odd but legal are looked up, not crashed on: NUL, an encoded slash, bytes that are not UTF-8
    for path in ("%00", "a%2Fb", "%FF%FE", "%ED%A0%80"):
        status, body = await api.get(f"/v1/model-runs/{path}/metrics")
        _error_message(status, body, 404)
        status, body = await api.get(f"/v1/model-runs/{RUN}/data-rows/{path}/metrics")
        _error_message(status, body, 404)
    status, body = await api.get("/v1/model-runs//metrics")  # empty run id: no such route
    _error_message(status, body, 404)


# ---------------------------------------------------------------------------------------------
# bearer token


async def test_bearer_token(secured: Api) -> None:
    paths = ["/v1/model-runs", f"/v1/model-runs/{RUN}/metrics", f"/v1/model-runs/{RUN}/data-rows/d1/metrics"]
    wrong = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"bearer{TOKEN}"},
    ]
    for path in paths:
        for headers in wrong:
            async with secured.session.get(secured.url + path, headers=headers) as r:
                assert r.status == 401, (path, headers)
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert "bearer token" in _error_message(r.status, await _body(r), 401)
        status, _ = await secured.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200
    # auth comes before anything else: an unknown run or a bad body without the token is still a 401
    status, _ = await secured.get("/v1/model-runs/no-such-run/metrics")
    assert status == 401
    status, _ = await secured.post(f"/v1/model-runs/{RUN}/metrics/query", raw=b"{", content_type="text/plain")
    assert status == 401
    status, body = await secured.post(
        f"/v1/model-runs/{RUN}/metrics/query", {"data_row_ids": ["d1"]}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert status == 200 and body["data_row_count"] == 1


async def test_bearer_header_that_is_not_utf8_is_401_not_500(secured: Api) -> None:
    host, port = secured.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET /v1/model-runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 401 "), response[:200]


async def test_openapi_is_public_and_declares_the_token(api: Api, secured: Api) -> None:
    """Deliberate: /openapi.json holds no data and tells clients that /v1/* needs a bearer token."""
    async with secured.session.get(secured.url + "/openapi.json") as r:  # no Authorization header
        assert r.status == 200
        doc = await r.json()
    assert doc["security"] == [{"bearer": []}]
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    status, open_doc = await api.get("/openapi.json")
    assert status == 200 and open_doc["security"] == []  # no token configured: nothing to declare
    assert set(doc["paths"]) == {
        "/v1/model-runs",
        "/v1/model-runs/{run}/metrics",
        "/v1/model-runs/{run}/data-rows/{dr}/metrics",
        "/v1/model-runs/{run}/metrics/query",
        "/v1/schemas/{name}",
    }


CHECKED_IN_SCHEMAS = {
    name: json.loads((Path(__file__).resolve().parents[2] / "schemas" / f"{name}.json").read_text())
    for name in ("prediction-event", "metric-event", "label-event")
}


async def test_event_schemas_are_served(api: Api, secured: Api) -> None:
    """GET /v1/schemas/{name}: the checked-in JSON Schema files (as JSON); a 404 names the known ones."""
    for name, expected in CHECKED_IN_SCHEMAS.items():
        status, doc = await api.get(f"/v1/schemas/{name}")
        assert status == 200, doc
        assert doc == expected
    status, body = await api.get("/v1/schemas/nope")
    assert status == 404
    assert "unknown event schema 'nope'" in body["error"]["message"] and "label-event" in body["error"]["message"]
    async with secured.session.get(secured.url + "/v1/schemas/label-event") as r:
        assert r.status == 401  # /v1/* needs the token when one is configured


async def test_store_failure_is_a_json_500(store: tuple[Path, Reference]) -> None:
    """Not a bad query: the server's own failure. Still JSON, and it says nothing about internals."""
    runner, backend, url = await start_app(store[0], None)
    backend.close()  # every store call now raises sqlite3.ProgrammingError
    try:
        async with aiohttp.ClientSession() as s, s.get(f"{url}/v1/model-runs") as r:
            assert r.status == 500
            body = await _body(r)
        assert "internal error" in _error_message(r.status, body, 500)
        assert "sqlite" not in body["error"]["message"].lower()
    finally:
        await runner.cleanup()
