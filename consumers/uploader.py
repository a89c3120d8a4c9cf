"""The uploader consumer (DESIGN §3): Kafka → validated batches per model run → Labelbox.

Per message (sync, in ``intake``): size check, parse, validate; a bad message is a
Rejection (DLQ) and never blocks its partition. The valid ones are kept compactly (the
NDJSON bytes of their rows, not the parsed models) so memory accounting is honest.

Per flushed batch (``process``): coalesced label registrations, data-row registration for
rows not yet known to be in the run (bounded cache), one NDJSON prediction import, wait,
status file → FAILURE rows dead-lettered per source message. Transient errors are retried
(service.labelbox.retry_policy); a permanent error is settled at its scope (service.labelbox.error_scope): one
about the model run dead-letters the run's messages at once and is remembered for a while
(service.labelbox.run_verdicts), any other bisects the batch until the offending messages are
isolated; an auth error stops the pipeline (FatalPipelineError).
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

import orjson
import structlog
from prometheus_client import CollectorRegistry

from consumers.dlq.transactional import TransactionalDlq, default_transactional_id
from consumers.runtime import (
    Accepted,
    ConsumerRuntime,
    FatalPipelineError,
    Record,
    Rejection,
    RuntimeConfig,
    RuntimeStatus,
)
from service.batching import BatchLimits
from service.config import Settings
from service.errors import ConfigError, EventValidationError
from service.events import EventKind, LabelEvent, parse_upload
from service.gc_tuning import tune_gc
from service.labelbox.client import LabelboxClient
from service.labelbox.error_scope import Scope
from service.labelbox.errors import (
    AuthorizationError,
    ImportFailedError,
    LabelboxFatalError,
    ResourceConflictError,
    ResourceNotFoundError,
    TaskFailedError,
)
from service.labelbox.import_dedup import last_versions
from service.labelbox.protocol import ImportState
from service.labelbox.request_limiter import RequestLimiter
from service.labelbox.retry_policy import Classification, Outcome, classify, error_scope, retrying
from service.labelbox.run_verdicts import ERROR_CLASS as MODEL_RUN_ERROR_CLASS
from service.labelbox.run_verdicts import RunVerdicts, Verdict
from service.prometheus import ConsumerMetrics

T = TypeVar("T")
Step = Callable[[str, list[tuple[Record, "Item"]]], Awaitable[list[Rejection]]]
DEFAULT_LOCAL_LABELBOX_URL = "http://127.0.0.1:8181/graphql"
# Accounted bytes per kept message/row beyond the payloads (Record, Item, tuples, list slots,
# object headers): measured with tracemalloc, so max_buffered_bytes bounds real memory.
_ITEM_OVERHEAD = 600
_ROW_OVERHEAD = 250
IMPORT_FAILED_MAX_ATTEMPTS = 4


class Item(NamedTuple):
    """A validated message, reduced to what delivery needs (one per message: a NamedTuple, built
    with ``tuple.__new__`` on the hot path, skipping the generated Python-level ``__new__``)."""

    model_run_id: str
    rows: list[tuple[str, str]]  # (uuid, data row key) per row, in payload order
    payload: bytes = b""  # the rows' NDJSON lines joined by "\n" (one exact-size buffer)
    label: LabelEvent | None = None


_new_tuple = tuple.__new__


class _NoRetry(Exception):
    """Carries an exception through tenacity without retrying it."""

    def __init__(self, inner: BaseException) -> None:
        super().__init__(str(inner))
        self.inner = inner


class _RunRejected(Exception):
    """Labelbox rejected the model run itself: ``items`` are the step's messages not yet settled,
    ``settled`` the rejections of messages a bisection had already settled."""

    def __init__(self, text: str, items: list[tuple[Record, Item]]) -> None:
        super().__init__(text)
        self.text = text
        self.items = items
        self.settled: list[Rejection] = []


class LruSet:
    """Bounded set of recently registered (model run, data row key) pairs."""

    def __init__(self, capacity: int) -> None:
        self._cap = capacity
        self._d: OrderedDict[tuple[str, str], None] = OrderedDict()

    def __contains__(self, key: tuple[str, str]) -> bool:
        if key in self._d:
            self._d.move_to_end(key)
            return True
        return False

    def add(self, key: tuple[str, str]) -> None:
        self._d[key] = None
        self._d.move_to_end(key)
        while len(self._d) > self._cap:
            self._d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)


def import_name(model_run_id: str, items: list[tuple[Record, Item]], attempt: int) -> str:
    """Deterministic: the same source messages give the same name, so a retry after a lost
    response finds the earlier import instead of creating a second one."""
    h = hashlib.sha256(model_run_id.encode())
    h.update("".join([f"{rec.topic}\0{rec.partition}\0{rec.offset}\n" for rec, _ in items]).encode())
    base = f"runstream-{h.hexdigest()[:24]}"
    return base if attempt == 0 else f"{base}-r{attempt}"


def _split_keys(keys: list[str]) -> tuple[list[str] | None, list[str] | None]:
    ids = [k[3:] for k in keys if k.startswith("id:")]
    gks = [k[3:] for k in keys if k.startswith("gk:")]
    return ids or None, gks or None


class UploaderHandler:
    """BatchHandler of the uploader; the only I/O is through ``client``."""

    def __init__(
        self,
        client: LabelboxClient,
        settings: Settings,
        metrics: ConsumerMetrics,
        topic_kinds: dict[str, EventKind],
        *,
        log: Any = None,
        cache_size: int = 200_000,
    ) -> None:
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.topic_kinds = topic_kinds
        self.log = log if log is not None else structlog.get_logger("runstream.uploader")
        self.known_rows = LruSet(cache_size)
        self.verdicts = RunVerdicts(settings.model_run_reject_ttl_s)
        self.clock: Callable[[], float] = time.monotonic
        metrics.rejected_model_runs.labels(settings.uploader_group).set_function(
            lambda: self.verdicts.count(self.clock()))

    # ------------------------------------------------------------------ intake (sync)

    def intake(self, record: Record) -> Accepted[Item] | Rejection:
        kind = self.topic_kinds.get(record.topic)
        if kind is None:
            return Rejection(record, "schema", f"topic {record.topic!r} is not an uploader input topic")
        held = len(self.verdicts) != 0  # usually none: one check per message
        if held and record.key is not None and (v := self._held(record)) is not None:
            return Rejection(record, MODEL_RUN_ERROR_CLASS, v.message, quiet=True)
        try:
            up = parse_upload(kind, record.value, max_bytes=self.settings.max_message_bytes)
        except EventValidationError as exc:
            return Rejection(record, exc.error_class, str(exc))
        mr = up.model_run_id
        if held and (v := self.verdicts.get(mr, self.clock())) is not None:
            return Rejection(record, MODEL_RUN_ERROR_CLASS, v.message, quiet=True)  # no call while it holds
        value, key = record.value, record.key
        size = (len(value) if value is not None else 0) + (len(key) if key is not None else 0) + _ITEM_OVERHEAD
        if isinstance(up, LabelEvent):
            return _new_tuple(Accepted, (mr, _new_tuple(Item, (mr, [], b"", up)), size))
        _, rows, payload = up
        if len(rows) == 1:
            u, k = rows[0]
            size += len(payload) + len(u) + len(k) + _ROW_OVERHEAD
        else:
            size += len(payload) + sum(len(u) + len(k) + _ROW_OVERHEAD for u, k in rows)
        return _new_tuple(Accepted, (mr, _new_tuple(Item, (mr, rows, payload, None)), size))

    def _held(self, record: Record) -> Verdict | None:
        """The verdict on the run a message is keyed by, if its body names that run: a rejected run's
        messages (thousands a second from a misconfigured producer) skip validation; others are
        validated and checked by the id they name."""
        assert record.key is not None
        v = self.verdicts.get(record.key.decode("utf-8", "replace"), self.clock())
        if v is None or record.value is None or len(record.value) > self.settings.max_message_bytes:
            return None
        try:
            obj = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            return None
        if type(obj) is dict and (obj.get("model_run_id") or obj.get("modelRunId")) == v.model_run_id:
            return v
        return None

    # ------------------------------------------------------------------ process (async)

    async def process(self, key: str, items: list[tuple[Record, Item]]) -> list[Rejection]:
        """Labels first (they add data rows to the run), then one import of all rows.
        Each step bisects only its own messages when Labelbox rejects them."""
        if self.verdicts and (v := self.verdicts.get(key, self.clock())) is not None:
            return [Rejection(rec, MODEL_RUN_ERROR_CLASS, v.message, quiet=True) for rec, _ in items]
        labels = [x for x in items if x[1].label is not None]
        rows = [x for x in items if x[1].label is None]
        try:
            rejected = await self._bisect(key, labels, self._deliver_labels) if labels else []
        except _RunRejected as exc:
            return exc.settled + self._reject_run(key, exc.text, exc.items + rows)
        if rows:
            try:
                rejected += await self._bisect(key, rows, self._deliver_rows)
            except _RunRejected as exc:
                return rejected + exc.settled + self._reject_run(key, exc.text, exc.items)
        if self.verdicts.accepted(key):
            self.log.info("Labelbox accepts the model run again", model_run=key)
        return rejected

    def _reject_run(self, mr: str, text: str, items: list[tuple[Record, Item]]) -> list[Rejection]:
        """Dead-letter the run's unsettled messages in one step and remember the verdict; the one
        log line per period is here (later messages are dead-lettered at intake, silently)."""
        v = self.verdicts.reject(mr, text, self.clock())
        self.metrics.model_run_rejections.labels(self.settings.uploader_group).inc()
        self.log.warning("Labelbox rejects the model run: its messages go to the DLQ without Labelbox calls "
                         "until the verdict expires", model_run=mr, error=text, error_class=MODEL_RUN_ERROR_CLASS,
                         messages=len(items), verdict_s=self.verdicts.ttl_s, period=v.periods)
        return [Rejection(rec, MODEL_RUN_ERROR_CLASS, v.message, quiet=True) for rec, _ in items]

    async def _bisect(self, mr: str, items: list[tuple[Record, Item]], step: Step) -> list[Rejection]:
        try:
            return await step(mr, items)
        except (asyncio.CancelledError, FatalPipelineError):
            raise
        except Exception as exc:
            if error_scope(exc, mr) is Scope.RUN:
                raise _RunRejected(getattr(exc, "message", None) or str(exc), items) from None
            c = classify(exc)
            if c.outcome is Outcome.FATAL:
                self.log.exception("stopping the pipeline", reason=c.reason)
                raise FatalPipelineError(f"{c.reason}: {type(exc).__name__}: {exc}") from None
            if c.outcome is Outcome.TRANSIENT and c.max_attempts is None:
                # the global retry cap (retry_max_attempts) ran out: an outage, not a payload fault
                msg = f"gave up after retries: {exc}"
                return [Rejection(rec, "labelbox.rejected", msg) for rec, _ in items]
            # Permanent, or a capped "maybe the payload" error (import FAILED, GraphQL 500)
            # that kept happening: isolate the offending messages.
            if len(items) == 1:
                self.log.info("message rejected by Labelbox", error=str(exc), offset=items[0][0].offset)
                return [Rejection(items[0][0], "labelbox.rejected", f"Labelbox rejected the message: {exc}")]
            mid = len(items) // 2
            self.log.info("bisecting batch after a permanent error", error=str(exc), size=len(items))
            left = await self._bisect(mr, items[:mid], step)
            try:
                return left + await self._bisect(mr, items[mid:], step)
            except _RunRejected as rr:
                rr.settled[:0] = left
                raise

    async def _call(self, fn: Callable[[], Awaitable[T]], no_retry: tuple[type[BaseException], ...] = ()) -> T:
        s = self.settings

        def on_retry(c: Classification, attempt: int, delay: float, exc: BaseException) -> None:
            self.metrics.labelbox_retries.labels(c.reason).inc()
            self.log.warning("retrying Labelbox call", reason=c.reason, attempt=attempt,
                             delay_s=round(delay, 3), error=str(exc))

        r = retrying(initial_s=s.retry_initial_s, max_s=s.retry_max_s, max_attempts=s.retry_max_attempts,
                     on_retry=on_retry)
        async def attempt() -> T:
            try:
                return await fn()
            except no_retry as exc:
                raise _NoRetry(exc) from exc

        try:
            return await r(attempt)
        except _NoRetry as wrapped:
            raise wrapped.inner from None
        except AuthorizationError:
            raise  # may be about one model run only: _bisect decides by its scope
        except LabelboxFatalError as exc:
            raise FatalPipelineError(f"Labelbox refused the credentials: {exc}") from None

    async def _deliver_labels(self, mr: str, items: list[tuple[Record, Item]]) -> list[Rejection]:
        await self._register_labels(mr, [it.label for _, it in items if it.label is not None])
        return []

    async def _deliver_rows(self, mr: str, items: list[tuple[Record, Item]]) -> list[Rejection]:
        if self.settings.register_data_rows:
            # Distinct keys first (a batch names the same data rows many times), then the cache.
            keys = dict.fromkeys([drk for _, it in items for _, drk in it.rows])
            known = self.known_rows
            wanted = [drk for drk in keys if (mr, drk) not in known]
            if wanted:
                await self._register_rows(mr, wanted)
        return await self._import(mr, items)

    async def _register_labels(self, mr: str, labels: list[LabelEvent]) -> None:
        if not labels:
            return
        label_ids: dict[str, None] = {}
        projects: dict[str, None] = {}
        keys: dict[str, None] = {}
        for ev in labels:
            label_ids.update(dict.fromkeys(ev.label_ids or ()))
            if ev.project_id:
                projects[ev.project_id] = None
            keys.update(dict.fromkeys(f"id:{i}" for i in ev.data_row_ids or ()))
            keys.update(dict.fromkeys(f"gk:{g}" for g in ev.global_keys or ()))
        if label_ids:
            ids = list(label_ids)
            await self._call(lambda: self.client.register_labels(mr, ids))
        for pid in projects:
            await self._call(lambda pid=pid: self.client.register_project_labels(mr, pid))  # type: ignore[misc]
        if keys:
            ids_, gks = _split_keys(list(keys))
            await self._call(lambda: self.client.register_data_rows(mr, ids_, gks))
            for k in keys:
                self.known_rows.add((mr, k))

    async def _register_rows(self, mr: str, keys: list[str]) -> None:
        """Register data rows; a failed task is bisected so unknown rows do not block known ones.
        Rows that cannot be registered are left to the import, which reports them per row."""
        ids, gks = _split_keys(keys)
        try:
            await self._call(lambda: self.client.register_data_rows(mr, ids, gks))
        except TaskFailedError as exc:
            if len(keys) == 1:
                self.log.info("data row could not be registered", model_run=mr, data_row=keys[0], error=str(exc))
                return
            mid = len(keys) // 2
            await self._register_rows(mr, keys[:mid])
            await self._register_rows(mr, keys[mid:])
            return
        for k in keys:
            self.known_rows.add((mr, k))

    async def _import(self, mr: str, items: list[tuple[Record, Item]]) -> list[Rejection]:
        if not any(it.rows for _, it in items):
            return []
        # Labelbox fails a uuid repeated within one import: send each uuid's last version only.
        rows = last_versions([(it.rows, it.payload) for _, it in items if it.rows])
        self.metrics.rows_superseded.labels(self.settings.uploader_group).inc(rows.superseded)
        payload = rows.payload
        attempt = 0
        while True:
            name = import_name(mr, items, attempt)
            try:
                state = await self._create_and_wait(mr, name, payload)
                break
            except ImportFailedError:
                attempt += 1
                self.metrics.labelbox_retries.labels("import_failed").inc()
                self.log.warning("prediction import ended FAILED; re-importing under a new name",
                                 model_run=mr, name=name, attempt=attempt)
                if attempt >= IMPORT_FAILED_MAX_ATTEMPTS:
                    raise
        statuses = await self._call(lambda: self.client.import_statuses(state, failures_only=True))
        by_uuid: dict[str, list[int]] = {}
        if any(st.status == "FAILURE" for st in statuses):
            for idx, (_, it) in enumerate(items):
                for uuid, _ in it.rows:
                    by_uuid[uuid] = [idx]  # the message whose version of the row was sent
        failed: dict[int, list[str]] = {}
        for st in statuses:
            if st.status == "FAILURE":
                for idx in by_uuid.get(st.uuid, []):
                    text = "; ".join(st.errors) or "row failed"
                    failed.setdefault(idx, []).append(f"row {st.uuid}: {text}")
        return [
            Rejection(items[idx][0], "labelbox.row_failed",
                      f"Labelbox import {name} rejected {len(msgs)} row(s): " + " | ".join(msgs))
            for idx, msgs in sorted(failed.items())
        ]

    async def _create_and_wait(self, mr: str, name: str, payload: bytes) -> ImportState:
        creating, running = (self.metrics.imports_in_flight.labels(self.settings.uploader_group, s)
                             for s in ("creating", "running"))
        with creating.track_inprogress():
            created = await self._call(lambda: self._create_or_find(mr, name, payload))
        # A FAILED import is not re-polled: the caller re-imports under a new name.
        with running.track_inprogress():
            return await self._call(lambda: self.client.wait_import(mr, name, first=created),
                                    no_retry=(ImportFailedError,))

    async def _create_or_find(self, mr: str, name: str, payload: bytes) -> ImportState:
        try:
            return await self.client.create_prediction_import(mr, name, payload)
        except ResourceConflictError:
            # Created by an earlier attempt whose response was lost (or by a previous process).
            return await self.client.get_prediction_import(mr, name)


# ---------------------------------------------------------------------- entry point


def topic_kinds(settings: Settings) -> dict[str, EventKind]:
    return {
        settings.topic_predictions: "prediction",
        settings.topic_metrics: "metric",
        settings.topic_labels: "label",
    }


async def check_credentials(client: LabelboxClient) -> None:
    """One cheap authenticated query before consuming, so bad credentials never touch data."""
    try:
        await client.get_prediction_import("runstream-credential-check", "runstream-credential-check")
    except ResourceNotFoundError:
        return


async def run_uploader(
    settings: Settings,
    stop: asyncio.Event,
    *,
    registry: CollectorRegistry | None = None,
    status: RuntimeStatus | None = None,
    metrics: ConsumerMetrics | None = None,
) -> None:
    """Run the uploader until ``stop`` is set; raises FatalPipelineError after stop if it had to halt."""
    log = structlog.get_logger("runstream.uploader")
    if not settings.kafka_bootstrap:
        raise ConfigError("RUNSTREAM_KAFKA_BOOTSTRAP is not set")
    if settings.labelbox_api_key is None:
        raise ConfigError("RUNSTREAM_LABELBOX_API_KEY is not set")
    inputs = (settings.topic_predictions, settings.topic_metrics, settings.topic_labels)
    if len(set(inputs)) != 3 or settings.topic_dlq in inputs:
        raise ConfigError("the predictions, metrics, labels and DLQ topics must be four different topics")
    metrics = metrics if metrics is not None else ConsumerMetrics.create(registry)
    status = status if status is not None else RuntimeStatus()
    url = settings.labelbox_url or DEFAULT_LOCAL_LABELBOX_URL
    limiter = RequestLimiter(settings.labelbox_max_requests_per_s, settings.labelbox_max_concurrent_requests,
                             on_wait=metrics.labelbox_budget_wait_seconds.inc,
                             on_pause=lambda _s: metrics.labelbox_rate_limit_pauses.inc())
    client = LabelboxClient(url, settings.labelbox_api_key.get_secret_value(),
                            on_request=metrics.observe_labelbox,
                            connector_limit=max(8, settings.max_in_flight_batches * 4), limiter=limiter)
    # Dead letters and offset commits in one transaction: exactly-once dead letters (consumers/dlq/transactional.py).
    dlq = TransactionalDlq(settings.kafka_bootstrap, settings.topic_dlq, settings.uploader_group,
                           default_transactional_id(settings.uploader_group, settings.transactional_id),
                           client_options=settings.kafka_client_options())
    config = RuntimeConfig(
        bootstrap=settings.kafka_bootstrap,
        group_id=settings.uploader_group,
        topics=(settings.topic_predictions, settings.topic_metrics, settings.topic_labels),
        limits=BatchLimits.from_ms(settings.batch_max_events, settings.batch_max_bytes, settings.batch_linger_ms),
        max_in_flight_batches=settings.max_in_flight_batches,
        max_buffered_bytes=settings.max_buffered_bytes,
        shutdown_grace_s=settings.shutdown_grace_s,
        rebalance_grace_s=settings.shutdown_grace_s,
        client_options=settings.kafka_client_options(),
        max_partition_fetch_bytes=max(1_048_576, settings.max_message_bytes + 1024),
    )
    await client.start()
    try:
        try:
            await check_credentials(client)
        except LabelboxFatalError as exc:
            status.fatal = f"Labelbox refused the credentials: {exc}"
            metrics.ready.labels(settings.uploader_group).set(0)
            log.error("not consuming: Labelbox refused the credentials", url=url, error=str(exc))
            await stop.wait()
            raise FatalPipelineError(status.fatal) from None
        except Exception as exc:  # transient: the batches will retry
            log.warning("credential check inconclusive", error=str(exc))
        await dlq.start(stop)
        try:
            handler = UploaderHandler(client, settings, metrics, topic_kinds(settings), log=log)
            runtime: ConsumerRuntime[Item] = ConsumerRuntime(config, handler, dlq, metrics, status, log=log)
            await runtime.run(stop)
        finally:
            await dlq.stop()
    finally:
        await client.close()


def main() -> int:
    """``python -m consumers.uploader``: run with signal handling (SIGTERM/SIGINT → graceful stop)."""
    settings = Settings()
    tune_gc()

    async def amain() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await run_uploader(settings, stop)
        except FatalPipelineError:
            return 3
        return 0

    return asyncio.run(amain())


if __name__ == "__main__":
    raise SystemExit(main())
