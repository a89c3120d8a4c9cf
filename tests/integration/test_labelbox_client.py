"""LabelboxClient against the local Labelbox-compatible API over real sockets."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest
import structlog
from prometheus_client import CollectorRegistry
from uploader_harness import API_KEY, local_labelbox, seed

from service.labelbox import client as lb
from service.labelbox import errors as lb_errors
from service.labelbox import protocol as lb_protocol
from service.prometheus import ConsumerMetrics

# Row uuids must be UUIDs: the local API, like Labelbox, fails any other uuid.
U1, U2, U3 = (f"00000000-0000-4000-8000-00000000000{i}" for i in (1, 2, 3))


async def test_registrations_import_polling_and_status_file(tmp_path: Path) -> None:
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=["mr-1"], data_rows=[{"id": "dr-1", "globalKey": "gk-1"}, {"id": "dr-2"}],
                   projects=[{"id": "p1"}], labels=[{"id": "l1", "projectId": "p1", "dataRowId": "dr-2"}])
        metrics = ConsumerMetrics.create(CollectorRegistry())
        async with lb.LabelboxClient(server.url, API_KEY, on_request=metrics.observe_labelbox,
                                     poll=lb.PollPolicy(initial_s=0.02, deadline_s=30)) as client:
            await client.register_data_rows("mr-1", None, ["gk-1"])
            await client.register_labels("mr-1", ["l1"])
            await client.register_project_labels("mr-1", "p1")
            rows = [
                orjson.dumps({"uuid": U1, "dataRow": {"id": "dr-1"}, "name": "cat",
                              "bbox": {"top": 1, "left": 2, "height": 3, "width": 4}}),
                orjson.dumps({"uuid": U2, "dataRow": {"id": "dr-404"}, "name": "cat",
                              "bbox": {"top": 1, "left": 2, "height": 3, "width": 4}}),
                orjson.dumps({"uuid": U3, "dataRow": {"id": "dr-2"}, "metricName": "acc", "metricValue": 0.5}),
            ]
            created = await client.create_prediction_import("mr-1", "imp-1", lb_protocol.ndjson_bytes(rows))
            assert created.name == "imp-1" and created.state in ("RUNNING", "FINISHED")
            with pytest.raises(lb_errors.ResourceConflictError):  # names are unique within a run
                await client.create_prediction_import("mr-1", "imp-1", lb_protocol.ndjson_bytes(rows))
            done = await client.wait_import("mr-1", "imp-1", first=created)
            assert done.state == "FINISHED" and done.status_file_url
            statuses = {s.uuid: s for s in await client.import_statuses(done)}
            assert statuses[U1].status == "SUCCESS" and statuses[U3].status == "SUCCESS"
            assert statuses[U2].status == "FAILURE" and "dr-404" in " ".join(statuses[U2].errors)
            with pytest.raises(lb_errors.TaskFailedError, match="no-such"):
                await client.register_labels("mr-1", ["no-such"])
            with pytest.raises(lb_errors.ResourceNotFoundError):
                await client.get_prediction_import("mr-1", "never-created")
        stored = await server.db(server.store.predictions, "mr-1")
        assert [p["uuid"] for p in stored] == [U1]
        ok = metrics.registry.get_sample_value("runstream_labelbox_requests_total",
                                               {"operation": "createModelErrorAnalysisPredictionImport",
                                                "status_class": "2xx"})
        assert ok == 2  # the conflict is a GraphQL error in an HTTP 200


async def test_faults_map_to_exception_types(tmp_path: Path) -> None:
    async with local_labelbox(tmp_path) as server:
        await seed(server, runs=["mr-1"], data_rows=[{"id": "dr-1"}])
        async with lb.LabelboxClient(server.url, API_KEY) as client:
            server.add_fault({"kind": "http_error", "status": 503, "count": 1})
            with pytest.raises(lb_errors.InternalServerError):
                await client.register_data_rows("mr-1", ["dr-1"], None)
            server.add_fault({"kind": "rate_limit", "retryAfter": 7, "count": 1})
            with pytest.raises(lb_errors.RateLimitError) as rl:
                await client.register_data_rows("mr-1", ["dr-1"], None)
            assert rl.value.retry_after == 7
            server.add_fault({"kind": "reset", "count": 1})
            with pytest.raises(lb_errors.NetworkError):
                await client.register_data_rows("mr-1", ["dr-1"], None)
            server.add_fault({"kind": "auth", "count": 1})
            with pytest.raises(lb_errors.AuthenticationError):
                await client.register_data_rows("mr-1", ["dr-1"], None)
            server.add_fault({"kind": "import_failed", "count": 1})
            st = await client.create_prediction_import("mr-1", "f", orjson.dumps(
                {"uuid": U1, "dataRow": {"id": "dr-1"}, "metricName": "m", "metricValue": 1.0}))
            with pytest.raises(lb_errors.ImportFailedError):
                await client.wait_import("mr-1", "f", first=st)
        async with lb.LabelboxClient("http://127.0.0.1:9/graphql", API_KEY, request_timeout_s=2) as dead:
            with pytest.raises(lb_errors.NetworkError):
                await dead.register_labels("mr-1", ["x"])


async def test_api_key_never_in_exceptions_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    secret = "sk-SECRET-should-never-leak-42"
    caplog.set_level(logging.DEBUG)
    captured: list[str] = []
    structlog.configure(processors=[lambda _l, _m, ev: captured.append(repr(ev)) or ev,  # type: ignore[func-returns-value]
                                    structlog.dev.ConsoleRenderer()])
    try:
        async with local_labelbox(tmp_path) as server:
            errors: list[BaseException] = []
            async with lb.LabelboxClient(server.url, secret) as client:
                for call in (lambda: client.register_labels("mr", ["l"]),
                             lambda: client.create_prediction_import("mr", "n", b"{}")):
                    try:
                        await call()
                    except lb_errors.LabelboxError as exc:
                        errors.append(exc)
            async with lb.LabelboxClient("http://127.0.0.1:9/graphql", secret, request_timeout_s=1) as dead:
                try:
                    await dead.register_labels("mr", ["l"])
                except lb_errors.LabelboxError as exc:
                    errors.append(exc)
        assert len(errors) == 3 and isinstance(errors[0], lb_errors.AuthenticationError)
        for exc in errors:
            assert secret not in str(exc) and secret not in repr(exc)
            assert exc.__cause__ is None or secret not in repr(exc.__cause__)
            assert exc.__suppress_context__ or exc.__context__ is None or secret not in repr(exc.__context__)
        assert secret not in repr(client) and secret not in repr(dead)
        assert secret not in caplog.text
        out = capsys.readouterr()
        assert secret not in out.out and secret not in out.err
        assert all(secret not in c for c in captured)
    finally:
        structlog.reset_defaults()
