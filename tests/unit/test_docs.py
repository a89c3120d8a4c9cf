"""README documents every setting, so a new knob cannot ship undocumented; docs/DEVELOPING.md's layout names
every package the wheel ships and every piece of dev tooling."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [n for n in Settings.model_fields if f"`RUNSTREAM_{n.upper()}`" not in readme]
    assert not missing, f"README lacks rows for: {missing}"


def test_readme_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in first_block.strip().splitlines()] == [["make", "run"], ["make", "test"]]


def test_the_layout_names_every_package_and_every_piece_of_dev_tooling() -> None:
    developing = (ROOT / "docs" / "DEVELOPING.md").read_text(encoding="utf-8")
    layout = developing.split("## Layout", 1)[1].split("```", 2)[1]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    names = [p.rstrip("*") + "/" for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    names += [
        c.name + ("/" if c.is_dir() else "")
        for c in sorted((ROOT / "devstack").iterdir())
        if c.name not in ("__init__.py", "__pycache__", "py.typed")
    ]
    assert "devstack/" in names and "kafka_broker.py" in names
    missing = [n for n in names if not re.search(rf"(^|\s){re.escape(n)}(\s|$)", layout)]
    assert not missing, f"docs/DEVELOPING.md's layout lacks: {missing}"
