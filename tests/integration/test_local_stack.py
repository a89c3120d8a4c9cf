"""`make run` in miniature: `runstream up` brings the whole stack up, data flows end to end, it stops cleanly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from devstack.local_stack import LOCAL_API_KEY

ROOT = Path(__file__).resolve().parents[2]


def test_up_runs_the_whole_stack_and_stops(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env["RUNSTREAM_HTTP_PORT"] = "0"  # 'up' falls back to a free port when the default is taken
    proc = subprocess.run(
        [sys.executable, "-m", "runstream", "up", "--duration", "30", "--rate", "40", "--summary-every", "3",
         "--data-dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "(dev broker started)" in out and "(local API, demo catalog seeded)" in out, out[-4000:]
    stored = [tuple(map(int, m)) for m in re.findall(r"Labelbox stored (\d+) predictions, (\d+) metrics", out)]
    assert stored and stored[-1][0] > 0 and stored[-1][1] > 0, out[-4000:]
    dlq = [int(n) for n in re.findall(r"DLQ (\d+)", out)]
    assert dlq and dlq[-1] > 0, "the demo's bad events should be in the DLQ:\n" + out[-4000:]
    assert re.search(r"\d+ metrics aggregated", out), out[-4000:]
    assert out.rstrip().endswith("stopped"), out[-2000:]
    # The Labelbox API key the stack configured never reaches a log or the console.
    logs = {p.name: p.read_text(encoding="utf-8", errors="replace") for p in tmp_path.glob("*.log")}
    assert {"service.log", "local-labelbox.log", "demo.log"} <= set(logs), sorted(logs)
    assert '"level"' in logs["service.log"], "service logs should be JSON lines"
    leaked = [name for name, text in {**logs, "console": out}.items() if LOCAL_API_KEY in text]
    assert not leaked, f"the API key appears in {leaked}"
