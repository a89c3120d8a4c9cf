from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Settings
from service.errors import ConfigError


def test_secret_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "key"
    secret.write_text("s3cret-key\n")
    monkeypatch.delenv("RUNSTREAM_LABELBOX_API_KEY", raising=False)
    monkeypatch.setenv("RUNSTREAM_LABELBOX_API_KEY_FILE", str(secret))
    settings = Settings(_env_file=None)
    assert settings.labelbox_api_key is not None
    assert settings.labelbox_api_key.get_secret_value() == "s3cret-key"
    assert "s3cret" not in repr(settings)


def test_variable_wins_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "key"
    secret.write_text("from-file")
    monkeypatch.setenv("RUNSTREAM_LABELBOX_API_KEY", "from-env")
    monkeypatch.setenv("RUNSTREAM_LABELBOX_API_KEY_FILE", str(secret))
    settings = Settings(_env_file=None)
    assert settings.labelbox_api_key is not None
    assert settings.labelbox_api_key.get_secret_value() == "from-env"


def test_unreadable_secret_file_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNSTREAM_API_TOKEN", raising=False)
    monkeypatch.setenv("RUNSTREAM_API_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="RUNSTREAM_API_TOKEN_FILE"):
        Settings(_env_file=None)


def test_env_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / ".env"
    env.write_text("RUNSTREAM_BATCH_MAX_EVENTS=17\nRUNSTREAM_TOPIC_DLQ=my.dlq\n")
    monkeypatch.delenv("RUNSTREAM_BATCH_MAX_EVENTS", raising=False)
    settings = Settings(_env_file=str(env))
    assert settings.batch_max_events == 17
    assert settings.topic_dlq == "my.dlq"


def test_sasl_options_pass_through() -> None:
    settings = Settings(
        _env_file=None,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="u",
        kafka_sasl_password="p",
    )
    opts = settings.kafka_client_options()
    assert opts["sasl_mechanism"] == "SCRAM-SHA-256"
    assert opts["sasl_plain_username"] == "u" and opts["sasl_plain_password"] == "p"
