"""Fault injection and bad requests against the local Labelbox API, seen by the SDK or raw aiohttp.

Every fault kind is observed exactly as documented in docs/LOCAL_LABELBOX.md; every bad
request gets a Labelbox-shaped error and leaves the server answering and the store intact.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import labelbox
import pytest
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from lbox import exceptions as lbx

from devstack.local_labelbox import LocalLabelbox

API_KEY = "k1"
ADMIN = "adm"
GET_RUN = "query GetModelRunPyApi($param_0: ID!){modelRun(where: {id: $param_0}){id name}}"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[LocalLabelbox]:
    async with LocalLabelbox(
        str(tmp_path / "f.sqlite3"), api_keys=[API_KEY], admin_token=ADMIN, max_body_size=64 * 1024
    ) as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def admin(http: aiohttp.ClientSession, server: LocalLabelbox, method: str, path: str, body: Any = None) -> Any:
    async with http.request(
        method, server.admin_url + path, json=body, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def seed(http: aiohttp.ClientSession, server: LocalLabelbox) -> str:
    ids = (await admin(http, server, "POST", "/data-rows", {"dataRows": [{"id": "d1", "globalKey": "g1"}]}))["ids"]
    run = {"id": "mr1", "name": "r", "dataRowIds": ids}
    runs = await admin(http, server, "POST", "/model-runs", {"modelRuns": [run]})
    return str(runs["ids"][0])


async def gql(
    http: aiohttp.ClientSession, server: LocalLabelbox, body: Any, key: str = API_KEY, **kw: Any
) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
    data = body if isinstance(body, bytes | aiohttp.FormData) else None
    async with http.post(server.url, json=None if data is not None else body, data=data, headers=headers) as r:
        text = await r.text()
        try:
            payload = await r.json(content_type=None)
        except ValueError:
            payload = text
        return r.status, payload, r.headers


async def assert_healthy(http: aiohttp.ClientSession, server: LocalLabelbox, run_id: str = "mr1") -> None:
    status, body, _ = await gql(http, server, {"query": GET_RUN, "variables": {"param_0": run_id}})
    assert status == 200 and body["data"]["modelRun"]["id"] == run_id
    assert (await admin(http, server, "GET", "/integrity"))["ok"] is True


def sdk(server: LocalLabelbox, key: str = API_KEY) -> labelbox.Client:
    return labelbox.Client(api_key=key, endpoint=server.url)


# ---- faults --------------------------------------------------------------------------


async def test_auth_missing_and_wrong_key(server: LocalLabelbox, http: aiohttp.ClientSession) -> None:
    await seed(http, server)
    status, body, _ = await gql(http, server, {"query": GET_RUN, "variables": {"param_0": "mr1"}}, key="wrong")
    assert status == 401 and body["errors"][0]["extensions"]["code"] == "AUTHENTICATION_ERROR"
    with pytest.raises(lbx.AuthenticationError):
        await asyncio.to_thread(sdk(server, "wrong").get_model_run, "mr1")


async def test_fault_auth_for_next_request_only(server: LocalLabelbox, http: aiohttp.ClientSession) -> None:
    await seed(http, server)
    await admin(http, server, "POST", "/faults", {"kind": "auth", "count": 1})
    c = sdk(server)
    with pytest.raises(lbx.AuthenticationError):
        await asyncio.to_thread(c.get_model_run, "mr1")
    assert (await asyncio.to_thread(c.get_model_run, "mr1")).uid == "mr1"
    assert (await admin(http, server, "GET", "/faults"))["faults"] == []


async def test_fault_http_5xx_retried_by_sdk_then_succeeds(server: LocalLabelbox, http: aiohttp.ClientSession) -> None:
    await seed(http, server)
    await admin(http, server, "POST", "/faults", {"kind": "http_error", "count": 2, "status": 502})
    status, body, _ = await gql(http, server, {"query": GET_RUN, "variables": {"param_0": "mr1"}})
    assert status == 502 and body["errors"][0]["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    # one 502 left: the SDK's execute retries InternalServerError and then succeeds
    assert (await asyncio.to_thread(sdk(server).get_model_run, "mr1")).uid == "mr1"


async def test_fault_http_5xx_exhausts_sdk_retries(
    server: LocalLabelbox, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(http, server)
    await admin(http, server, "POST", "/faults", {"kind": "http_error", "fraction": 1.0, "status": 503})
    c = sdk(server)
    # Same retry policy as the SDK's execute (retry InternalServerError), with only its time
    # constants shrunk from 1 s..60 s / 120 s to 10 ms..50 ms / 0.5 s; the transport is untouched.
    req_cls = type(c._request_client)
    short = gretry.Retry(
        predicate=gretry.if_exception_type(lbx.InternalServerError, lbx.TimeoutError),
        initial=0.01,
        maximum=0.05,
        timeout=0.5,
    )
    monkeypatch.setattr(req_cls, "execute", short(req_cls.execute.__wrapped__))
    with pytest.raises(gexc.RetryError) as ei:
        await asyncio.to_thread(c.get_model_run, "mr1")
    assert isinstance(ei.value.cause, lbx.InternalServerError)
    assert str(ei.value.cause) == "Internal server http error 503"
    await admin(http, server, "DELETE", "/faults")
    await assert_healthy(http, server)


async def test_fault_rate_limit(server: LocalLabelbox, http: aiohttp.ClientSession) -> None:
    await seed(http, server)
    await admin(http, server, "POST", "/faults", {"kind": "rate_limit", "count": 2, "retryAfter": 7})
    status, body, headers = await gql(http, server, {"query": GET_RUN, "variables": {"param_0": "mr1"}})
    assert status == 429 and headers["Retry-After"] == "7"
    assert body["message"].startswith("You have exceeded")
    with pytest.raises(lbx.ApiLimitError):
        await asyncio.to_thread(sdk(server).get_model_run, "mr1")
    await assert_healthy(http, server)


async def test_fault_connection_reset(server: LocalLabelbox, http: aiohttp.ClientSession) -> None:
    await seed(http, server)
    await admin(http, server, "POST", "/faults", {"kind": "reset", "count": 2})
    with pytest.raises(aiohttp.ClientError):
        await gql(http, server, {"query": GET_RUN, "variables": {"param_0": "mr1"}})
    with pytest.raises(lbx.NetworkError):
        await asyncio.to_thread(sdk(server).get_model_run, "mr1")
    await assert_healthy(http, server)


async def test_fault_latency_and_operation_filter(server: LocalLabelbox, http: aiohttp.ClientSession) -> None:
    await seed(http, server)
    await admin(
        http, server, "POST", "/faults",
        {"kind": "latency", "count": 1, "latencyMs": 300, "operations": ["GetModelRunPyApi"]},
    )
    await admin(http, server, "POST", "/faults", {"kind": "http_error", "count": 1, "operations": ["nothingMatches"]})
    t0 = time.monotonic()
    await assert_healthy(http, server)
    assert time.monotonic() - t0 >= 0.3
    t0 = time.monotonic()
    await assert_healthy(http, server)
    assert time.monotonic() - t0 < 0.3
    faults = (await admin(http, server, "GET", "/faults"))["faults"]
    assert [f["kind"] for f in faults] == ["http_error"]  # the filtered rule never matched


async def test_fault_import_failed(server: LocalLabelbox, http: aiohttp.ClientSession) -> None:
    await seed(http, server)
    await admin(http, server, "POST", "/faults", {"kind": "import_failed", "count": 1})
    c = sdk(server)
    mr = await asyncio.to_thread(c.get_model_run, "mr1")
    row = {"uuid": "0b9e4a0c-3f5e-4d3a-9c57-7e1c2a9b1f10", "name": "car", "dataRow": {"id": "d1"},
           "bbox": {"top": 1, "left": 1, "height": 1, "width": 1}}
    imp = await asyncio.to_thread(mr.add_predictions, "bad", [row])
    await asyncio.to_thread(imp.wait_till_done, 0.05)
    assert imp.state.value == "FAILED"
    with pytest.raises(ValueError, match="Import failed"):
        await asyncio.to_thread(lambda: imp.statuses)
    imp2 = await asyncio.to_thread(mr.add_predictions, "good", [row])
    await asyncio.to_thread(imp2.wait_till_done, 0.05)
    assert imp2.state.value == "FINISHED"


async def test_faults_never_touch_admin_and_clear(server: LocalLabelbox, http: aiohttp.ClientSession) -> None:
    await seed(http, server)
    await admin(http, server, "POST", "/faults", {"kind": "http_error", "fraction": 1.0})
    assert (await admin(http, server, "GET", "/model-runs/mr1/counts"))["dataRows"] == 1
    status, _, _ = await gql(http, server, {"query": GET_RUN, "variables": {"param_0": "mr1"}})
    assert status == 503
    await admin(http, server, "DELETE", "/faults")
    await assert_healthy(http, server)


async def test_admin_requires_token_and_validates_faults(server: LocalLabelbox, http: aiohttp.ClientSession) -> None:
    async with http.get(server.admin_url + "/faults") as r:
        assert r.status == 401
    async with http.post(
        server.admin_url + "/faults", json={"kind": "explode", "count": 1}, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as r:
        assert r.status == 400 and "kind" in (await r.json())["error"]


# ---- bad requests --------------------------------------------------------------------


async def test_bad_requests_get_labelbox_errors(server: LocalLabelbox, http: aiohttp.ClientSession) -> None:
    await seed(http, server)
    cases: list[tuple[Any, int, str]] = [
        ({"query": "query { modelRun(where: {id: \"mr1\"}) { id "}, 400, "GRAPHQL_PARSE_FAILED"),
        ({"query": "query { noSuchField }"}, 400, "GRAPHQL_VALIDATION_FAILED"),
        ({"query": "query { modelRun(where: {id: \"mr1\"}) { id bogus } }"}, 400, "GRAPHQL_VALIDATION_FAILED"),
        ({"query": GET_RUN, "variables": {"param_0": {"not": "an id"}}}, 400, "GRAPHQL_VALIDATION_FAILED"),
        ({"query": GET_RUN}, 400, "GRAPHQL_VALIDATION_FAILED"),
        ({"query": GET_RUN, "variables": "x"}, 400, "MALFORMED_REQUEST"),
        ({"variables": {}}, 400, "MALFORMED_REQUEST"),
        (b"{not json", 400, "MALFORMED_REQUEST"),
        (b"[1,2]", 400, "MALFORMED_REQUEST"),
        ({"query": GET_RUN, "variables": {"param_0": "missing"}}, 200, "RESOURCE_NOT_FOUND"),
    ]
    for _ in range(2):  # the second round answers from the parsed/validated document cache
        for body, want_status, want_code in cases:
            status, payload, _ = await gql(http, server, body, headers={"Content-Type": "application/json"})
            assert status == want_status, (body, payload)
            assert payload["errors"][0]["extensions"]["code"] == want_code, (body, payload)
    with pytest.raises(lbx.InvalidQueryError):
        await asyncio.to_thread(sdk(server).execute, "query { noSuchField }")
    with pytest.raises(lbx.InvalidQueryError, match="Syntax Error"):
        await asyncio.to_thread(sdk(server).execute, "query {")
    await assert_healthy(http, server)


async def test_oversized_body(server: LocalLabelbox, http: aiohttp.ClientSession) -> None:
    await seed(http, server)
    big = b'{"query": "' + b"x" * (200 * 1024) + b'"}'
    status, payload, _ = await gql(http, server, big, headers={"Content-Type": "application/json"})
    assert status == 413 and payload["errors"][0]["extensions"]["code"] == "MALFORMED_REQUEST"
    form = aiohttp.FormData()
    form.add_field("operations", '{"query": "mutation { x }", "variables": {"file": null}}')
    form.add_field("map", '{"f": ["variables.file"]}')
    form.add_field("f", b"y" * (200 * 1024), filename="f.ndjson", content_type="application/x-ndjson")
    status, payload, _ = await gql(http, server, form)
    assert status == 413 and payload["errors"][0]["extensions"]["code"] == "MALFORMED_REQUEST"
    await assert_healthy(http, server)


async def test_malformed_multipart(server: LocalLabelbox, http: aiohttp.ClientSession) -> None:
    await seed(http, server)
    mutation = (
        "mutation m($modelRunId: ID!, $name: String!, $file: Upload!, $contentLength: Int!) {"
        " createModelErrorAnalysisPredictionImport(data: {modelRunId: $modelRunId name: $name"
        " filePayload: {file: $file, contentLength: $contentLength}}) {id state} }"
    )
    ops = '{"query": %s, "variables": {"file": null, "contentLength": 1, "modelRunId": "mr1", "name": "n"}}'
    variants = []
    f1 = aiohttp.FormData()
    f1.add_field("operations", "{broken")
    f1.add_field("map", "{}")
    variants.append(f1)
    f2 = aiohttp.FormData()
    f2.add_field("operations", ops % json.dumps(mutation))
    f2.add_field("f", b"{}", filename="f.ndjson")  # no map part
    variants.append(f2)
    f3 = aiohttp.FormData()
    f3.add_field("operations", ops % json.dumps(mutation))
    f3.add_field("map", '{"f": ["variables.file"]}')  # map names a part that never comes
    variants.append(f3)
    for form in variants:
        status, payload, _ = await gql(http, server, form)
        assert status == 400 and payload["errors"][0]["extensions"]["code"] == "MALFORMED_REQUEST", payload
    raw = b"--zz\r\nContent-Disposition: form-data; name=\"operations\"\r\n\r\n{\"q"  # truncated body
    status, payload, _ = await gql(
        http, server, raw, headers={"Content-Type": "multipart/form-data; boundary=zz"}
    )
    assert status == 400 and payload["errors"][0]["extensions"]["code"] == "MALFORMED_REQUEST", payload
    assert (await admin(http, server, "GET", "/model-runs/mr1/counts"))["imports"] == 0
    await assert_healthy(http, server)
