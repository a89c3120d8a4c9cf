"""The published JSON Schemas (schemas/*.json): generated from the contract, and agreeing with the service.

Every event a test in test_events.py sends through ``parse_event`` is replayed here and checked with
a standard validator (``jsonschema``, draft 2020-12): what the service accepts, the schema accepts;
what the service rejects, the schema rejects too — unless the rejection is one of the rules no JSON
Schema expresses (``SEMANTIC_ONLY``, the same list as ``service.events.schema.SEMANTIC_ONLY_RULES``).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from runstream.cli import main
from service.errors import EventValidationError, MalformedJsonError, MessageTooLargeError
from service.events import parse_event
from service.events.schema import SCHEMA_NAMES, SEMANTIC_ONLY_RULES, event_schema, schema_json

REPO = Path(__file__).resolve().parents[2]
KIND_SCHEMA = {"prediction": "prediction-event", "metric": "metric-event", "label": "label-event"}

# How the service words each rule of SEMANTIC_ONLY_RULES: (reason pattern, field pattern or None).
SEMANTIC_ONLY: list[tuple[str, str | None]] = [
    (r"given twice", None),
    (
        r"^is required( \(the Labelbox model run id\))?$",
        r"^(model_run_id|(predictions\[\d+\]|prediction|metrics\[\d+\])\.(dataRow|data_row|metricValue|value))$",
    ),
    (r"exactly one of id or globalKey", None),
    (r"must have name or schemaId", None),
    (r"not both|^is required \(a non-empty list", None),
    (r"raster segmentation \(mask\)|inside each answer", None),
    (r"^more than 5000 rows", None),
    (r"confidence keys must be numbers|repeats the confidence", None),
    (r"only accepts CONFUSION_MATRIX|is required for a confusion matrix metric", None),
    (r"4 integers; got a number$", None),
    (r"reserved metric name", None),
    (r"a label event needs exactly one", None),
]


def test_semantic_only_lists_agree() -> None:
    assert len(SEMANTIC_ONLY) == len(SEMANTIC_ONLY_RULES)


def _semantic_only(err: EventValidationError) -> bool:
    return any(
        re.search(reason, err.reason) and (field is None or re.search(field, err.field))
        for reason, field in SEMANTIC_ONLY
    )


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_checked_in_schemas_match_the_contract(name: str) -> None:
    path = REPO / "schemas" / f"{name}.json"
    assert path.read_text(encoding="utf-8") == schema_json(name), (
        f"{path} is out of date: regenerate with `.venv/bin/runstream schema --write schemas`"
    )
    Draft202012Validator.check_schema(event_schema(name))


def test_cli_prints_a_schema_and_writes_all(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["schema", "metric-event"]) == 0
    assert capsys.readouterr().out == schema_json("metric-event")
    assert main(["schema", "--write", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.json" for n in SCHEMA_NAMES)
    assert main(["schema"]) == 2  # neither a name nor --write: a clear error
    assert "name an event schema" in capsys.readouterr().err


def _recorded_events() -> list[tuple[str, bytes, Any]]:
    """Run every test of test_events.py (each parametrized case) and record each parse_event call."""
    spec = importlib.util.spec_from_file_location("_replayed_test_events", Path(__file__).with_name("test_events.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seen: list[tuple[str, bytes, Any]] = []

    def recording(kind: Any, raw: Any, *, max_bytes: int) -> Any:
        try:
            result = parse_event(kind, raw, max_bytes=max_bytes)
        except EventValidationError as exc:
            seen.append((kind, raw, exc))
            raise
        seen.append((kind, raw, result))
        return result

    module.parse_event = recording
    for name, fn in vars(module).items():
        if not name.startswith("test_") or not callable(fn):
            continue
        grids = []
        for mark in getattr(fn, "pytestmark", []):
            if mark.name != "parametrize":
                continue
            names = mark.args[0]
            names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
            grids.append([dict(zip(names, v if len(names) > 1 else (v,), strict=True)) for v in mark.args[1]])
        for combo in itertools.product(*grids):
            kwargs = {k: v for part in combo for k, v in part.items()}
            fn(**kwargs)
    return seen


def test_schemas_classify_every_unit_test_event_like_the_service() -> None:
    validators = {kind: Draft202012Validator(event_schema(name)) for kind, name in KIND_SCHEMA.items()}
    records = _recorded_events()
    checked = {"accepted": 0, "rejected": 0, "semantic-only": 0}
    for kind, raw, outcome in records:
        if kind not in validators or isinstance(outcome, MalformedJsonError | MessageTooLargeError):
            continue  # not a JSON object (or too large): nothing for a schema to say
        doc = json.loads(raw)
        errors = sorted(validators[kind].iter_errors(doc), key=lambda e: list(e.absolute_path))
        if not isinstance(outcome, EventValidationError):
            assert not errors, f"service accepts, schema rejects {raw[:300]!r}: {errors[0].message}"
            checked["accepted"] += 1
        elif _semantic_only(outcome):
            checked["semantic-only"] += 1
        else:
            assert errors, f"service rejects ({outcome}), schema accepts {raw[:300]!r}"
            checked["rejected"] += 1
    # the replay really covers the unit tests' examples
    assert checked["accepted"] >= 40 and checked["rejected"] >= 40 and checked["semantic-only"] >= 30, checked
