"""The layer rules of docs/DEVELOPING.md ("Layers"), checked on the import graph (ast, nothing imported).

- Nothing under ``service/`` imports ``consumers/``; nothing under ``service/`` or ``consumers/`` imports
  the CLI (``runstream/``), the top layer that assembles processes from both.
- Dev tooling (``devstack/``) is apart from the product: nothing under ``service/`` or ``consumers/`` imports
  it, and it never imports the CLI; the CLI, the tests and the benchmarks use it.
- aiokafka clients are constructed only in the Kafka edge, ``service/kafka/clients.py``.
- Pure modules import no I/O library.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KAFKA_EDGE = "service/kafka/clients.py"
KAFKA_CLIENTS = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient"}
PURE = (
    "service/errors.py",
    "service/labelbox/errors.py",
    "service/labelbox/protocol.py",
    "service/labelbox/retry_policy.py",
    "service/labelbox/error_scope.py",
    "service/labelbox/run_verdicts.py",
    "service/labelbox/request_budget.py",
    "service/batching.py",
    "service/offsets.py",
    "service/health.py",
    "service/labelbox/import_dedup.py",
    "service/api/pipeline_status.py",
    "service/api/metric_history.py",
    "consumers/dlq/letter.py",
    "consumers/dlq/headers.py",
)
IO_LIBRARIES = {"aiohttp", "aiokafka", "asyncio", "sqlite3", "psycopg", "socket", "httpx", "requests"}


def _modules(*folders: str) -> list[tuple[str, ast.Module]]:
    out = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            out.append((rel, ast.parse(path.read_text(), filename=rel)))
    return out


def _imported(tree: ast.Module) -> set[str]:
    """Every module a file imports, including imports inside functions and importlib calls on literals."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def _offenders(folders: tuple[str, ...], upper: tuple[str, ...]) -> dict[str, list[str]]:
    found = {
        rel: sorted(m for m in _imported(tree) if m.split(".")[0] in upper) for rel, tree in _modules(*folders)
    }
    return {rel: mods for rel, mods in found.items() if mods}


def test_service_never_imports_consumers_or_the_cli() -> None:
    assert _offenders(("service",), ("consumers", "runstream")) == {}


def test_consumers_never_import_the_cli() -> None:
    assert _offenders(("consumers",), ("runstream",)) == {}


def test_the_cli_is_the_one_layer_that_imports_the_roles() -> None:
    # the rule above is not vacuous: the CLI does import the consumer roles
    assert "runstream/commands/run.py" in _offenders(("runstream",), ("consumers",))


def test_the_product_never_imports_dev_tooling() -> None:
    assert _offenders(("service", "consumers"), ("devstack",)) == {}


def test_dev_tooling_never_imports_the_cli() -> None:
    assert _offenders(("devstack",), ("runstream",)) == {}


def test_the_cli_imports_dev_tooling() -> None:
    # the rules above are not vacuous: `runstream up` and `runstream dev-kafka` do import devstack
    found = _offenders(("runstream",), ("devstack",))
    assert "devstack.local_stack" in found["runstream/commands/up.py"]
    assert "devstack.kafka_broker" in found["runstream/commands/dev_kafka.py"]


def test_aiokafka_clients_are_constructed_only_in_the_kafka_edge() -> None:
    constructed: dict[str, set[str]] = {}
    for rel, tree in _modules("service", "consumers"):
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in KAFKA_CLIENTS:
                    constructed.setdefault(rel, set()).add(name)
    assert KAFKA_EDGE in constructed  # the rule below would pass vacuously if the scan broke
    assert set(constructed) - {KAFKA_EDGE} == set()


def test_pure_modules_import_no_io() -> None:
    trees = dict(_modules("service", "consumers"))
    found = {
        rel: sorted(m for m in _imported(trees[rel]) if m.split(".")[0] in IO_LIBRARIES)
        for rel in PURE
    }
    assert {rel: mods for rel, mods in found.items() if mods} == {}
