"""Exactly-once dead letters for the uploader: DLQ writes and offset commits in one Kafka transaction.

The uploader commits a partition's offset only up to its highest contiguous done offset (Labelbox
accepted every batch below it). A dead letter is therefore not written when its message is
rejected: it waits here, and is written by the transaction that also commits the offset moving
past its message (``commit``). Either both happen or neither: a crash before the commit leaves
no visible letter (the transaction is aborted; DLQ readers use ``read_committed``) and the
message is re-evaluated by the next owner; a crash after it leaves the letter and an offset
that never delivers the message again. Letters of partitions this member gives up are dropped
(``forget``): their next owner re-evaluates them.

Fencing: one transactional producer per process, ``transactional_id`` =
``RUNSTREAM_TRANSACTIONAL_ID`` when set (a stable name per replica, e.g. a StatefulSet pod name:
a restarted replica fences its predecessor and aborts its open transaction at once), else
``<group>-<host>-<pid>`` (unique; an open transaction of a killed process is aborted by the broker
after ``transaction_timeout_ms``). A failed transaction (broker down, fenced, too large) is
aborted, the producer replaced, and the same letters and offsets are tried again at the next
commit: an outage, reported through ``failing``, never a reason to stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from consumers.dlq.headers import DlqHeaders
from consumers.dlq.letter import dead_letter_record
from consumers.dlq.writer import topic_max_message_bytes
from consumers.shutdown import bounded
from service.kafka import START_TIMEOUT_S, KafkaEndpoint, make_producer, start_client

log = logging.getLogger("runstream.dlq")

TP = tuple[str, int]


def default_transactional_id(group: str, configured: str | None = None) -> str:
    return configured or f"{group}-{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter waiting for the commit that moves past its source offset."""

    offset: int
    key: bytes | None
    value: bytes | None
    headers: DlqHeaders


def _size(le: Letter) -> int:
    return len(le.value or b"") + len(le.key or b"") + 200


class TransactionalDlq:
    """``add`` letters as messages are rejected; ``commit(offsets)`` writes the due ones with the offsets."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group_id: str,
        transactional_id: str,
        *,
        client_options: dict[str, Any] | None = None,
        max_request_size: int = 64 * 1_048_576,
        transaction_timeout_ms: int = 15_000,
        commit_timeout_s: float = 10.0,
        on_failing: Callable[[str | None], None] | None = None,
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self.transactional_id = transactional_id
        self._bootstrap = bootstrap
        self._options = dict(client_options or {})
        self._endpoint = KafkaEndpoint(bootstrap, self._options)
        self._max_request_size = max_request_size
        self._txn_timeout_ms = transaction_timeout_ms
        self._commit_timeout_s = commit_timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._broken = False  # a cancelled transaction left the producer in an unknown state
        self._pending: dict[TP, list[Letter]] = {}
        self.pending_bytes = 0
        self.limit = max_request_size
        self.on_failing = on_failing
        self.failing: str | None = None
        self._failing_since = 0.0

    def _new_producer(self) -> AIOKafkaProducer:
        return make_producer(
            self._endpoint,
            transactional_id=self.transactional_id,
            transaction_timeout_ms=self._txn_timeout_ms,
            compression_type="gzip",
            max_request_size=self._max_request_size,
        )

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Start the producer (this fences an earlier producer with the same transactional id)."""
        producer = self._new_producer()
        try:
            await start_client(producer, self._endpoint, "DLQ transactional producer", retry_for_s=START_TIMEOUT_S,
                               stop=stop)
        except BaseException:
            await bounded(producer.stop(), "DLQ transactional producer stop", 1.0)
            raise
        self._producer = producer
        self.limit = min(await topic_max_message_bytes(self._bootstrap, self.topic, self._options),
                         self._max_request_size)

    async def stop(self, timeout_s: float = 2.0) -> None:
        if self.pending:
            log.warning("DLQ: %d dead letter(s) not committed at stop; their messages are re-evaluated by the "
                        "next owner", self.pending)
        await self._discard_producer(timeout_s)

    async def _discard_producer(self, timeout_s: float = 3.0) -> None:
        producer, self._producer = self._producer, None
        self._broken = False
        if producer is not None:
            await bounded(producer.stop(), "DLQ transactional producer stop", timeout_s)

    # ------------------------------------------------------------------ letters

    def add(self, topic: str, partition: int, letter: Letter) -> None:
        self._pending.setdefault((topic, partition), []).append(letter)
        self.pending_bytes += _size(letter)

    def forget(self) -> None:
        """Drop every waiting letter: the partitions were given up, or the pipeline stopped."""
        self._pending.clear()
        self.pending_bytes = 0

    @property
    def pending(self) -> int:
        return sum(len(v) for v in self._pending.values())

    def _set_failing(self, reason: str | None) -> None:
        if reason == self.failing:
            return
        if reason is None:
            log.warning("DLQ transactions recovered after %.1f s", time.monotonic() - self._failing_since)
        elif self.failing is None:
            self._failing_since = time.monotonic()
            log.error("DLQ transaction failed; the letters and offsets are retried at the next commit: %s", reason)
        self.failing = reason
        if self.on_failing is not None:
            self.on_failing(reason)

    # ------------------------------------------------------------------ the transaction

    async def commit(self, offsets: dict[TP, int]) -> list[Letter] | None:
        """Write the letters below each partition's new offset and commit ``offsets`` for the group,
        atomically. Returns the letters written, or None when the transaction failed (nothing
        happened; call again with the same or larger offsets)."""
        due = [(tp, le) for tp, off in offsets.items() for le in self._pending.get(tp, ()) if le.offset < off]
        try:
            await asyncio.wait_for(self._transaction(due, offsets), self._commit_timeout_s)
        except asyncio.CancelledError:
            # Shutdown cut the transaction short: the producer's state is unknown, replace it
            # (stop() closes it, bounded); nothing is awaited here, the caller is leaving.
            self._broken = True
            raise
        except MessageSizeTooLargeError as exc:
            self.limit = max(1024, self.limit // 2)  # the topic's limit is smaller than read: fit tighter
            self._set_failing(repr(exc))
            await self._discard_producer()
            return None
        except (KafkaError, TimeoutError, OSError) as exc:
            self._set_failing(repr(exc) if not isinstance(exc, TimeoutError) else "transaction timed out")
            await self._discard_producer()
            return None
        self.pending_bytes -= sum(_size(le) for _, le in due)
        for tp, off in offsets.items():
            rest = [le for le in self._pending.get(tp, ()) if le.offset >= off]
            if rest:
                self._pending[tp] = rest
            else:
                self._pending.pop(tp, None)
        self._set_failing(None)
        return [le for _, le in due]

    async def _transaction(self, due: list[tuple[TP, Letter]], offsets: dict[TP, int]) -> None:
        if self._broken:
            await self._discard_producer()
        if self._producer is None:
            producer = self._new_producer()
            try:
                await producer.start()
            except BaseException:
                await bounded(producer.stop(), "DLQ transactional producer stop")
                raise
            self._producer = producer
        producer = self._producer
        await producer.begin_transaction()
        try:
            futures = []
            for _, le in due:
                value, headers = dead_letter_record(le.key, le.value, le.headers, self.limit)
                futures.append(await producer.send(self.topic, value=value, key=le.key, headers=headers))
            await producer.send_offsets_to_transaction(
                {TopicPartition(t, p): o for (t, p), o in offsets.items()}, self.group_id
            )
            await asyncio.gather(*futures)
            await producer.commit_transaction()
        except BaseException:
            # Best effort: a broker that is gone cannot abort either; replacing the producer (same id)
            # aborts the open transaction when it starts, or the broker does after the timeout.
            await bounded(producer.abort_transaction(), "DLQ transaction abort", 2.0)
            raise
