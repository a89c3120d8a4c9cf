"""Every import of the project's own packages in bench/ names a module that exists.

The bench scripts are not imported by the tests (they need a broker and minutes), so a moved module
would otherwise surface only in the next ``make bench``.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OWN = ("service", "consumers", "runstream", "devstack")


def _own_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, imported name or None) for each import of OWN packages in the file."""
    out: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] in OWN]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OWN:
            out += [(node.lineno, node.module, a.name) for a in node.names]
    return out


def _exists(module: str, name: str | None) -> bool:
    if importlib.util.find_spec(module) is None:
        return False
    if name is None:
        return True
    # ``from module import attribute`` or ``from package import submodule``
    if hasattr(importlib.import_module(module), name):
        return True
    try:
        return importlib.util.find_spec(f"{module}.{name}") is not None
    except ModuleNotFoundError:  # ``module`` is not a package
        return False


def test_bench_scripts_import_only_modules_that_exist() -> None:
    checked = 0
    missing = []
    for path in sorted((ROOT / "bench").glob("*.py")):
        for line, module, name in _own_imports(path):
            checked += 1
            try:
                ok = _exists(module, name)
            except ModuleNotFoundError:
                ok = False
            if not ok:
                missing.append(f"bench/{path.name}:{line}: {module}" + (f".{name}" if name else ""))
    assert checked > 50, "the walk found too few imports to mean anything"
    assert not missing, "imports of modules that do not exist:\n" + "\n".join(missing)
