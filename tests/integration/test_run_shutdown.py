"""SIGTERM while the service still waits for an unreachable broker is a clean stop (exit 0)."""

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


def _unreachable_services_env(tmp_path: Path) -> dict[str, str]:
    """The test's environment without RUNSTREAM_* settings, pointing at a broker and an API nobody serves."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env.update({
        "RUNSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",  # nothing listens here
        "RUNSTREAM_LABELBOX_API_KEY": "k",
        "RUNSTREAM_LABELBOX_URL": f"http://127.0.0.1:{free_port()}/graphql",
        "RUNSTREAM_STATE_SQLITE_PATH": str(tmp_path / "state.sqlite3"),
    })  # fmt: skip
    return env


@contextlib.contextmanager
def _service(tmp_path: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``python [args] -m runstream run ...`` against the unreachable services, output in out.log; killed
    on exit if it is still running."""
    with (tmp_path / "out.log").open("wb") as log:
        env = _unreachable_services_env(tmp_path)
        proc = subprocess.Popen([sys.executable, *args], env=env, stdout=log, stderr=log)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _sigterm_exits_0(proc: subprocess.Popen[bytes], tmp_path: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, (tmp_path / "out.log").read_text()[-2000:]


@pytest.mark.parametrize("role", ["aggregator", "uploader"])
def test_sigterm_during_kafka_start_retry_exits_0(role: str, tmp_path: Path) -> None:
    with _service(tmp_path, "-m", "runstream", "run", "--role", role, "--no-http") as proc:
        deadline = time.monotonic() + 30
        while b"Kafka not reachable" not in (tmp_path / "out.log").read_bytes() and proc.poll() is None:
            assert time.monotonic() < deadline, "the service never started waiting for Kafka"
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "out.log").read_text()[-2000:]
        _sigterm_exits_0(proc, tmp_path)


def test_sigterm_while_the_service_is_still_loading_exits_0(tmp_path: Path) -> None:
    """An orchestrator may stop a pod before its modules are imported: a clean stop, not death by signal."""
    args = ("-X", "importtime", "-m", "runstream", "run", "--role", "uploader", "--no-http")
    with _service(tmp_path, *args) as proc:
        # -X importtime writes a line per imported module to stderr: once runstream's own import
        # line is there the start-up handler is installed, and aiokafka is not loaded yet.
        deadline = time.monotonic() + 30
        while b"runstream.startup" not in (tmp_path / "out.log").read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "out.log").read_text()[-2000:]
            time.sleep(0.005)
        assert b"| aiokafka\n" not in (tmp_path / "out.log").read_bytes(), "too late: the service was loaded"
        _sigterm_exits_0(proc, tmp_path)
