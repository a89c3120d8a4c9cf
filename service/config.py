"""Runtime configuration, read from ``RUNSTREAM_*`` environment variables and ``.env``.

Secrets may also come from a file named by ``RUNSTREAM_<NAME>_FILE`` (Docker and
Kubernetes secrets are mounted as files); the file wins over nothing, the variable wins
over the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import ConfigError

_SECRET_FIELDS = ("labelbox_api_key", "api_token", "kafka_sasl_password", "local_labelbox_admin_token")


class Settings(BaseSettings):
    """All knobs of runstream; each maps to ``RUNSTREAM_<FIELD>`` (upper case)."""

    model_config = SettingsConfigDict(
        env_prefix="RUNSTREAM_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # Kafka
    kafka_bootstrap: str | None = Field(
        default=None, description="Kafka bootstrap servers; unset means the dev broker (make run)."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    topic_predictions: str = "runstream.predictions"
    topic_metrics: str = "runstream.metrics"
    topic_labels: str = "runstream.labels"
    topic_dlq: str = "runstream.dlq"
    uploader_group: str = "runstream-uploader"
    transactional_id: str | None = Field(
        default=None, description="The uploader's Kafka transactional id; unset: <group>-<host>-<pid>."
    )
    aggregator_group: str = "runstream-aggregator"
    max_message_bytes: int = Field(default=1_048_576, gt=0, description="Raw message size limit.")
    dlq_max_message_bytes: int = Field(
        default=2_097_152, gt=0,
        description="max.message.bytes set on the DLQ topic by 'topics create': an input letter (1 MiB "
                    "broker default) plus its headers; larger letters are stored truncated.",
    )

    # Labelbox
    labelbox_url: str | None = Field(
        default=None, description="Labelbox GraphQL endpoint; unset means the local Labelbox-compatible API."
    )
    labelbox_api_key: SecretStr | None = None
    # The process's Labelbox request budget, shared round robin by all model runs (service.labelbox.request_budget).
    labelbox_max_requests_per_s: float = Field(
        default=75.0, gt=0, description="Labelbox requests per second of one uploader process (4,500/min, "
        "under the 5,000/min of Labelbox's Starter plan; set 20 on the Free plan's 1,500/min).")
    labelbox_max_concurrent_requests: int = Field(default=16, gt=0, description="Labelbox requests in flight.")

    # Uploader batching and retries
    batch_max_events: int = Field(default=5_000, gt=0)
    batch_max_bytes: int = Field(default=8_388_608, gt=0)
    batch_linger_ms: int = Field(default=500, ge=0)
    max_in_flight_batches: int = Field(default=4, gt=0)
    max_buffered_bytes: int = Field(default=64 * 1_048_576, gt=0, description="Pause fetching above this.")
    retry_initial_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)
    retry_max_attempts: int | None = Field(default=None, description="None retries transient errors forever.")
    register_data_rows: bool = True
    shutdown_grace_s: float = Field(default=30.0, gt=0)
    model_run_reject_ttl_s: float = Field(
        default=60.0, ge=0, description="How long Labelbox's rejection of a model run (not found, deleted, no "
        "permission) is remembered: its messages are dead-lettered without calls until one probe decides again.")

    # Aggregator state
    state_backend: Literal["sqlite", "postgres"] = "sqlite"
    state_sqlite_path: Path = Path("runstream-state.sqlite3")
    state_postgres_dsn: str | None = None
    state_commit_interval_ms: int = Field(default=1_000, gt=0)

    # HTTP API
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    api_token: SecretStr | None = None
    local_labelbox_admin_token: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        """Fill ``<secret>`` from ``RUNSTREAM_<SECRET>_FILE`` when the plain variable is absent."""
        if not isinstance(data, dict):
            return data
        for name in _SECRET_FIELDS:
            if data.get(name) is not None or os.environ.get(f"RUNSTREAM_{name.upper()}") is not None:
                continue
            path = os.environ.get(f"RUNSTREAM_{name.upper()}_FILE")
            if path:
                try:
                    data[name] = Path(path).read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise ConfigError(f"RUNSTREAM_{name.upper()}_FILE={path} cannot be read: {exc.strerror}") from exc
        return data

    def kafka_client_options(self) -> dict[str, Any]:
        """Security options passed through to every aiokafka client."""
        opts: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            opts["sasl_mechanism"] = self.kafka_sasl_mechanism
            opts["sasl_plain_username"] = self.kafka_sasl_username
            opts["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            opts["ssl_context"] = create_ssl_context(
                cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None
            )
        return opts
