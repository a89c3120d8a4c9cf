"""docker-compose.yml is checked statically (no Docker engine on the build machines).

This file checks what the topology means (dependencies, health, settings, defaults wired together);
``test_deploy_compose.py`` validates the file against the Compose specification schema.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RUNSTREAM_SERVICES = ("topics", "local-labelbox", "uploader", "aggregator")
_DEFAULT = re.compile(r"^\$\{(?P<name>[A-Z_][A-Z0-9_]*):-(?P<default>.*)\}$")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _default_of(value: str) -> str:
    """``${NAME:-default}`` -> ``default`` (nested defaults resolved); plain values are returned as they are."""
    while (m := _DEFAULT.match(value)) is not None:
        value = m.group("default")
    return value


def _option(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def test_kafka_runs_in_kraft_mode_from_the_official_image() -> None:
    kafka = _services()["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert not kafka["image"].endswith(":latest")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "healthcheck" in kafka
    # the volume is where the broker writes its log
    assert any(v.endswith(":" + env["KAFKA_LOG_DIRS"]) for v in kafka["volumes"])


def test_services_that_talk_to_kafka_wait_for_a_healthy_broker_and_name_only_known_settings() -> None:
    from service.config import _SECRET_FIELDS, Settings

    known = {f"RUNSTREAM_{n.upper()}" for n in Settings.model_fields}
    known |= {f"RUNSTREAM_{n.upper()}_FILE" for n in _SECRET_FIELDS}
    for name, svc in _services().items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: use the mapping form of environment"
        unknown = {k for k in env if k.startswith("RUNSTREAM_")} - known
        assert not unknown, f"{name} sets unknown variables {unknown}"
        if "RUNSTREAM_KAFKA_BOOTSTRAP" in env:
            assert env["RUNSTREAM_KAFKA_BOOTSTRAP"] == "kafka:9092"
            assert svc["depends_on"]["kafka"]["condition"] == "service_healthy", name


def test_every_long_running_service_has_a_healthcheck_and_one_shots_do_not_restart() -> None:
    for name, svc in _services().items():
        hc = svc.get("healthcheck")
        assert hc, f"{name} has no healthcheck"
        if hc.get("disable"):
            assert svc.get("restart") == "no", f"{name}: only one-shot services may disable the healthcheck"
        else:
            assert hc["test"][0] in ("CMD", "CMD-SHELL"), name
            assert svc.get("restart") == "unless-stopped", name


def test_dependencies_use_conditions_that_can_be_met() -> None:
    services = _services()
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must use the long form with conditions"
        for dep, spec in deps.items():
            target = services[dep]
            if spec["condition"] == "service_healthy":
                assert not target["healthcheck"].get("disable"), f"{name} waits for {dep}, which has no healthcheck"
            elif spec["condition"] == "service_completed_successfully":
                assert target.get("restart") == "no", f"{name} waits for {dep} to exit, but it restarts"
            else:
                pytest.fail(f"{name} -> {dep}: condition {spec['condition']!r} is not a readiness condition")


def test_runstream_services_build_from_the_deploy_dockerfile() -> None:
    services = _services()
    for name in RUNSTREAM_SERVICES:
        build = services[name]["build"]
        assert build["dockerfile"] == "deploy/Dockerfile", name
        assert (ROOT / build["context"] / build["dockerfile"]).is_file()


def test_roles_and_one_shot_topic_creation() -> None:
    s = _services()
    assert s["topics"]["command"][:2] == ["topics", "create"]
    assert s["topics"]["restart"] == "no"
    assert s["uploader"]["command"] == ["run", "--role", "uploader"]
    assert s["aggregator"]["command"] == ["run", "--role", "aggregator"]
    for consumer in ("uploader", "aggregator"):
        deps = s[consumer]["depends_on"]
        assert deps["topics"]["condition"] == "service_completed_successfully"
        assert s[consumer]["environment"]["RUNSTREAM_HTTP_HOST"] == "0.0.0.0"


def test_aggregator_keeps_its_state_in_the_compose_postgres() -> None:
    s = _services()
    env = s["aggregator"]["environment"]
    assert env["RUNSTREAM_STATE_BACKEND"] == "postgres"
    assert s["postgres"]["image"] == "postgres:15"
    assert s["aggregator"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    pg = s["postgres"]["environment"]
    dsn = env["RUNSTREAM_STATE_POSTGRES_DSN"]
    assert dsn == f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"


def test_labelbox_defaults_to_the_local_api_with_a_matching_key() -> None:
    s = _services()
    local_cmd = s["local-labelbox"]["command"]
    assert local_cmd[0] == "local-labelbox"
    assert _option(local_cmd, "--host") == "0.0.0.0"
    port = _option(local_cmd, "--port")
    assert _option(local_cmd, "--db").startswith("/data/")
    env = s["uploader"]["environment"]
    url = env["RUNSTREAM_LABELBOX_URL"]
    assert url.startswith("${RUNSTREAM_LABELBOX_URL:-"), "the user must be able to override the Labelbox URL"
    assert _default_of(url) == f"http://local-labelbox:{port}/graphql"
    assert _default_of(env["RUNSTREAM_LABELBOX_API_KEY"]) == _default_of(_option(local_cmd, "--api-key"))
    assert s["uploader"]["depends_on"]["local-labelbox"]["condition"] == "service_healthy"


def test_default_of_resolves_nested_defaults() -> None:
    assert _default_of("${A:-${B:-x}}") == "x"
    assert _default_of("${A:-http://h:1/g}") == "http://h:1/g"
    assert _default_of("plain") == "plain"
