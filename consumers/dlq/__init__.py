"""The dead-letter queue in one place (DESIGN §2; guarantees in docs/RELIABILITY.md).

headers.py        the header model: why a message was dead-lettered and where it came from
letter.py         one way to build a dead letter (value + headers that fit the DLQ topic; pure)
writer.py         DlqWriter: acknowledged writes, retried through outages (the aggregator's DLQ)
transactional.py  TransactionalDlq: letters + offset commits in one Kafka transaction (the uploader's)
monitor.py        DlqMonitor: a read-only tail of the DLQ for the API and dashboard
replay.py         replay(): re-publish dead letters to their source topics (``runstream dlq replay``)
"""

from consumers.dlq.headers import ERROR_CLASSES, DlqHeaders
from consumers.dlq.writer import DlqWriter

__all__ = ["ERROR_CLASSES", "DlqHeaders", "DlqWriter"]
