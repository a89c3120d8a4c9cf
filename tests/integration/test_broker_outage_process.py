"""The service through a broker outage, as a real process: `runstream run --role all` against a
broker of its own, the broker killed, ~20 s of outage, then SIGTERM.

- quiet outage: the repeated client errors are collapsed, so the outage produces a bounded number
  of log lines (not ~100 per second), and /readyz + /metrics say Kafka is unreachable;
- bounded shutdown: SIGTERM during the outage exits within RUNSTREAM_SHUTDOWN_GRACE_S + a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from kafka_io import produce

from devstack.kafka_broker import DevKafka, free_port

ROOT = Path(__file__).resolve().parents[2]
GRACE_S = 3.0
OUTAGE_S = 20.0


@dataclass
class Outcome:
    lines_during_outage: list[str]
    readyz_during_outage: tuple[int, str]
    metrics_during_outage: str
    exit_code: int | None
    exit_seconds: float
    log_tail: str


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, repr(exc)


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    tmp = tmp_path_factory.mktemp("outage")
    broker = DevKafka(data_dir=tmp / "kafka")
    broker.start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env.update({
        "PYTHONPATH": str(ROOT),
        "RUNSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
        "RUNSTREAM_LABELBOX_API_KEY": "k",
        "RUNSTREAM_LABELBOX_URL": f"http://127.0.0.1:{free_port()}/graphql",  # nothing listens: fine here
        "RUNSTREAM_STATE_SQLITE_PATH": str(tmp / "state.sqlite3"),
        "RUNSTREAM_HTTP_PORT": str(port),
        "RUNSTREAM_SHUTDOWN_GRACE_S": str(GRACE_S),
    })  # fmt: skip
    log_path = tmp / "service.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([sys.executable, "-m", "runstream", "topics", "create", "--partitions", "2"], env=env,
                       cwd=ROOT, check=True, capture_output=True, timeout=60)
        with log_path.open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "runstream", "run", "--role", "all"], env=env, cwd=ROOT,
                                    stdout=log, stderr=log)
        deadline = time.monotonic() + 90
        base = f"http://127.0.0.1:{port}"
        while _get(base + "/readyz")[0] != 200:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "service never became ready: " + _get(base + "/readyz")[1]
            time.sleep(0.5)
        # Work in flight when the broker dies: uploads retry against an unreachable Labelbox, the
        # aggregator holds state to commit.
        asyncio.run(produce(broker.bootstrap, [
            (topic, b"mr-1", orjson.dumps({"model_run_id": "mr-1", **body}))
            for i in range(20)
            for topic, body in (
                ("runstream.predictions", {"predictions": [{"dataRow": {"id": f"dr-{i}"}, "name": "cat",
                                                            "bbox": {"top": 1, "left": 1, "height": 2, "width": 2}}]}),
                ("runstream.metrics", {"metrics": [{"dataRow": {"id": f"dr-{i}"}, "metricName": "acc",
                                                    "metricValue": 0.5}]}),
            )
        ]))
        time.sleep(3)
        broker.kill()
        start = log_path.stat().st_size
        time.sleep(OUTAGE_S)
        readyz = _get(base + "/readyz")
        metrics = _get(base + "/metrics")[1]
        with log_path.open("rb") as f:
            f.seek(start)
            during = f.read().decode(errors="replace").splitlines()
        assert proc.poll() is None, log_path.read_text()[-3000:]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = proc.wait(timeout=GRACE_S + 60)
        except subprocess.TimeoutExpired:
            code = None
        yield Outcome(during, readyz, metrics, code, time.monotonic() - t0, log_path.read_text()[-4000:])
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        broker.stop()


def _summary(lines: list[str]) -> str:
    c: Counter[str] = Counter()
    for line in lines:
        try:
            c[str(json.loads(line).get("event"))[:90]] += 1
        except ValueError:
            c[line[:90]] += 1
    return "\n".join(f"{n:5d} {e}" for e, n in c.most_common(15))


def test_sigterm_during_broker_outage_exits_within_grace(outage: Outcome) -> None:
    assert outage.exit_code is not None, "still running 60 s after SIGTERM:\n" + outage.log_tail
    assert outage.exit_seconds <= GRACE_S + 7, f"exit took {outage.exit_seconds:.1f} s\n{outage.log_tail}"
    assert outage.exit_code == 0, outage.log_tail
    assert "abandon" in outage.log_tail  # what could not be committed is said


def test_broker_outage_logs_are_collapsed_and_readiness_says_so(outage: Outcome) -> None:
    lines = outage.lines_during_outage
    assert len(lines) <= 40, f"{len(lines)} log lines in {OUTAGE_S:.0f} s of outage:\n{_summary(lines)}"
    assert any("repeated" in line for line in lines), _summary(lines)
    status, body = outage.readyz_during_outage
    assert status == 503 and "Kafka" in body, body
    assert "runstream_kafka_outage 1.0" in outage.metrics_during_outage
