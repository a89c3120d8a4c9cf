"""docker-compose.yml against the official Compose specification JSON schema.

Schema source: ``compose-spec.json`` (title "Compose Specification", JSON Schema 2020-12) as vendored in the
PyPI package ``check-jsonschema`` (pinned in pyproject's dev extras) under
``check_jsonschema/builtin_schemas/vendor/``; it is the compose-spec project's schema, Apache-2.0
(``vendor/licenses/LICENSE.compose-spec`` in the same package). Read from the installed package, not copied.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@cache
def _schema() -> dict[str, Any]:
    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text("utf-8")
    schema = json.loads(text)
    assert schema["title"] == "Compose Specification"
    return dict(schema)


def _errors(doc: dict[str, Any]) -> list[str]:
    schema = _schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_schema_is_the_compose_specification_under_apache_2() -> None:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    assert "Apache License" in vendor.joinpath("licenses", "LICENSE.compose-spec").read_text("utf-8")
    assert _schema()["$schema"].startswith("https://json-schema.org/draft/2020-12")


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    errors = _errors(_compose())
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d["services"]["uploader"].__setitem__("helthcheck", {"test": ["CMD", "true"]}), "helthcheck"),
        (
            lambda d: d["services"]["aggregator"]["depends_on"]["postgres"].__setitem__("condition", "service_ready"),
            "service_ready",
        ),
        (lambda d: d["services"]["uploader"]["depends_on"].__setitem__("kafka", {"required": True}), "condition"),
        (lambda d: d.__setitem__("servics", {}), "servics"),
    ],
    ids=["misspelt-key", "bad-condition", "dependency-without-condition", "unknown-top-level"],
)
def test_the_validator_rejects_broken_copies(mutate: Any, needle: str) -> None:
    doc = copy.deepcopy(_compose())
    mutate(doc)
    errors = _errors(doc)
    assert errors, "a broken compose file passed the schema"
    assert any(needle in e for e in errors), errors


def test_dockerignore_lets_in_everything_the_dockerfile_copies() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    ignore = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    assert ignore[0] == "**", "the context starts from nothing and re-includes what the build needs"
    sources: list[str] = []
    for line in (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            sources += parts[1:-1]
    assert sources
    for src in sources:
        assert f"!{src.rstrip('/')}" in ignore or f"!{src.rstrip('/')}/" in ignore, f"{src} is not in the context"
        assert (ROOT / src).exists(), src
