"""docker-compose.yml is checked statically (no Docker engine on the build machines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_kafka_runs_in_kraft_mode_from_the_official_image() -> None:
    kafka = _compose()["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "healthcheck" in kafka


def test_services_depend_on_healthy_kafka_and_name_only_known_settings() -> None:
    from service.config import Settings

    known = {f"RUNSTREAM_{n.upper()}" for n in Settings.model_fields}
    known |= {f"RUNSTREAM_{n.upper()}_FILE" for n in ("labelbox_api_key", "api_token", "kafka_sasl_password")}
    for name, svc in _compose()["services"].items():
        if name == "kafka":
            continue
        assert svc["depends_on"]["kafka"]["condition"] == "service_healthy"
        unknown = {k for k in svc.get("environment", {}) if k.startswith("RUNSTREAM_")} - known
        assert not unknown, f"{name} sets unknown variables {unknown}"
