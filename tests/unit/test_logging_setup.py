from __future__ import annotations

import io
import json
import logging

import structlog

from service.config import Settings
from service.logging_setup import configure_logging


def test_secrets_never_reach_the_log_stream() -> None:
    key = "lb-key-very-secret-123"
    settings = Settings(_env_file=None, labelbox_api_key=key, kafka_sasl_password="sasl-pw-456")
    out = io.StringIO()
    configure_logging(settings, stream=out)
    try:
        structlog.get_logger("t").error("request failed", header=f"Bearer {key}", nested={"k": [key]})
        logging.getLogger("aiokafka").warning("auth with sasl-pw-456 failed")
        try:
            raise RuntimeError(f"boom {key}")
        except RuntimeError:
            structlog.get_logger("t").exception("crashed")
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
    text = out.getvalue()
    assert key not in text and "sasl-pw-456" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["event"] for line in lines] == ["request failed", "auth with *** failed", "crashed"]
    assert lines[0]["header"] == "Bearer ***" and lines[0]["nested"] == {"k": ["***"]}
    assert "boom ***" in lines[2]["exception"]
    assert all(line["level"] for line in lines)
