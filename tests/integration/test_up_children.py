"""Children die with `runstream up`, however it ends.

- a closed stdout (`runstream up | head -1`) does not kill `up`; Ctrl-C later stops every child;
- SIGKILL of `up` (nothing of it runs any more) still stops every child: the parent-death signal.

The broker is the session broker (RUNSTREAM_KAFKA_BOOTSTRAP), so the children are the local
Labelbox API, the service and the demo stream.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.kafka_broker import free_port

ROOT = Path(__file__).resolve().parents[2]
GRACE_S = 3


def children_of(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry.name))
    return out


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out


@pytest.fixture
def up_env(kafka_bootstrap: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env.update({"PYTHONPATH": str(ROOT), "RUNSTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
                "RUNSTREAM_HTTP_PORT": str(free_port()), "RUNSTREAM_SHUTDOWN_GRACE_S": str(GRACE_S),
                "RUNSTREAM_TOPIC_PREDICTIONS": f"up-pred-{tmp_path.name}",
                "RUNSTREAM_TOPIC_METRICS": f"up-metric-{tmp_path.name}",
                "RUNSTREAM_TOPIC_LABELS": f"up-label-{tmp_path.name}",
                "RUNSTREAM_TOPIC_DLQ": f"up-dlq-{tmp_path.name}",
                "RUNSTREAM_UPLOADER_GROUP": f"up-u-{tmp_path.name}",
                "RUNSTREAM_AGGREGATOR_GROUP": f"up-a-{tmp_path.name}"})  # fmt: skip
    return env


@pytest.fixture
def cleanup() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    for pid in pids:  # only what this test started
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def start_up(env: dict[str, str], tmp_path: Path, stdout: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "runstream", "up", "--data-dir", str(tmp_path / "stack"), "--rate", "5",
         "--model-runs", "1", "--data-rows", "5", "--summary-every", "0.5"],
        env=env, cwd=ROOT, stdout=stdout, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def wait_children(proc: subprocess.Popen[bytes], n: int, timeout: float = 120) -> set[int]:
    deadline = time.monotonic() + timeout
    kids: set[int] = set()
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"`up` exited with {proc.returncode} before starting its {n} children"
        kids |= children_of(proc.pid)
        if len(alive(kids)) >= n:
            return kids
        time.sleep(0.3)
    raise AssertionError(f"only {len(alive(kids))} of {n} children started")


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive(pids)


def test_closed_stdout_does_not_kill_up_and_ctrl_c_stops_every_child(
    up_env: dict[str, str], tmp_path: Path, cleanup: list[int]
) -> None:
    proc = start_up(up_env, tmp_path, subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # what `| head -1` reads
    assert first.startswith(b"Kafka"), first
    proc.stdout.close()  # ... and then head exits
    kids = wait_children(proc, 3)  # local Labelbox API, service, demo: all started after the pipe closed
    cleanup.extend(kids)
    time.sleep(2)  # a few summary lines into the closed pipe
    assert proc.poll() is None, f"`up` died on a write to a closed stdout (exit {proc.returncode})"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=3 * (GRACE_S + 10)) == 0
    assert not alive(kids), f"children survived `up`: {alive(kids)}"


def test_sigkill_of_up_still_stops_every_child(up_env: dict[str, str], tmp_path: Path, cleanup: list[int]) -> None:
    with (tmp_path / "up.out").open("wb") as out:
        proc = start_up(up_env, tmp_path, out.fileno())
    kids = wait_children(proc, 3)
    cleanup.extend(kids)
    proc.kill()
    proc.wait()
    left = wait_gone(kids, GRACE_S + 15)
    assert not left, f"children outlived a SIGKILLed `up`: {left}"
