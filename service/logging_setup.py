"""Structured JSON logs for the service, with secrets scrubbed before anything is written.

Both structlog loggers and stdlib loggers (aiokafka, aiohttp) go through one pipeline, so
every line is one JSON object and every line passes the redactor. The redactor replaces
the literal secret values (API key, tokens, SASL password) wherever they appear, whatever
code path produced the message — a last line of defence, not the first.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

from service.config import Settings
from service.log_collapse import RepeatCollapser

REDACTED = "***"


def secrets_of(settings: Settings) -> list[str]:
    values = [settings.labelbox_api_key, settings.api_token, settings.kafka_sasl_password,
              settings.local_labelbox_admin_token]  # fmt: skip
    return [v.get_secret_value() for v in values if v is not None and len(v.get_secret_value()) >= 4]


def make_redactor(secrets: Iterable[str]) -> structlog.types.Processor:
    """A processor replacing each secret (and 'Bearer <secret>') in every string value."""
    secret_list = sorted(set(secrets), key=len, reverse=True)

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            for secret in secret_list:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(scrub(v) for v in value)
        return value

    def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if not secret_list:
            return event_dict
        for key, value in list(event_dict.items()):
            if not isinstance(value, str | dict | list | tuple):
                value = str(value) if isinstance(value, BaseException) else value
            event_dict[key] = scrub(value)
        return event_dict

    return redact


def configure_logging(
    settings: Settings, *, level: int = logging.INFO, stream: TextIO | None = None
) -> RepeatCollapser:
    """JSON lines on stderr (or ``stream``) for structlog and stdlib loggers alike; repeated Kafka
    client errors are collapsed (service.log_collapse), and the returned collapser knows whether
    such an outage is going on."""
    redact = make_redactor(secrets_of(settings))
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    collapser = RepeatCollapser().start()
    handler.addFilter(collapser)
    root = logging.getLogger()
    for old in root.handlers:
        for f in old.filters:
            if isinstance(f, RepeatCollapser):
                f.stop()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return collapser
