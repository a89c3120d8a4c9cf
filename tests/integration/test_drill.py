"""The short fault drill (bench/drill.py --short) as a subprocess: the whole system (dev broker,
local Labelbox API, 2 uploaders, 2 aggregators on PostgreSQL) through kill -9s, a broker restart,
Labelbox 503/429/failed-import windows and a rebalance, with every event accounted for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_short_drill_accounts_for_every_event(tmp_path: Path) -> None:
    if not os.environ.get("RUNSTREAM_TEST_POSTGRES_DSN"):
        pytest.skip("the drill's aggregators need PostgreSQL: set RUNSTREAM_TEST_POSTGRES_DSN (.ci/run does)")
    report = tmp_path / "drill.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.drill", "--short", "--report", str(report)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    out = report.read_text() if report.exists() else proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, out
    assert "drill PASSED" in out
