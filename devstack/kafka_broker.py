"""A real single-node Apache Kafka broker (KRaft) for development and tests.

The broker jars come from Maven Central once (``deploy/kafka/pom.xml``) and are cached;
every start formats a fresh data directory unless asked to keep one (broker restarts in
fault drills). Readiness is a TCP connect to the PLAINTEXT port: for a non-zero port,
Kafka opens its listener only once the broker is unfenced, so a connect means ready.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from service.errors import RunstreamError


class DevKafkaError(RunstreamError):
    """The local development broker could not be prepared, started or stopped."""


KAFKA_VERSION = "4.4.0"
"""Newest 4.x on Maven Central here; aiokafka 0.14 produces, consumes, joins groups,
commits and creates topics against it (tests/integration/test_kafka_roundtrip.py)."""

STARTED_LINE = "Kafka Server started"  # KafkaRaftServer's INFO line, kept by deploy/kafka/log4j2.properties
DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy" / "kafka"
JVM_OPTS = (
    "-Xms128m",
    "-Xmx768m",
    "-XX:+UseSerialGC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)


def default_cache_dir() -> Path:
    """Where jars are cached: ``RUNSTREAM_CACHE_DIR`` or ``~/.cache/runstream``."""
    env = os.environ.get("RUNSTREAM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "runstream"


def new_cluster_id() -> str:
    """A KRaft cluster id: URL-safe base64 of 16 random bytes, unpadded, not starting with '-'."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def render_server_properties(
    template: str, *, data_dir: Path, broker_port: int, controller_port: int, extra: Mapping[str, str]
) -> str:
    """Fill the ``server.properties.in`` template; ``extra`` keys override or add settings."""
    text = (
        template.replace("@DATA@", str(data_dir))
        .replace("@BROKER_PORT@", str(broker_port))
        .replace("@CONTROLLER_PORT@", str(controller_port))
    )
    if not extra:
        return text
    kept = [line for line in text.splitlines() if line.split("=", 1)[0].strip() not in extra]
    kept.extend(f"{k}={v}" for k, v in extra.items())
    return "\n".join(kept) + "\n"


def _require_tool(name: str, purpose: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise DevKafkaError(f"'{name}' is not on PATH; it is needed to {purpose}. Install it and retry.")
    return path


def ensure_jars(version: str = KAFKA_VERSION, cache_dir: Path | None = None) -> Path:
    """Return the folder holding the broker classpath, fetching it with Maven on first use."""
    lib = (cache_dir or default_cache_dir()) / "kafka" / f"lib-{version}"
    if (lib / ".complete").exists():
        return lib
    mvn = _require_tool("mvn", "fetch the Apache Kafka broker jars from Maven Central")
    _require_tool("java", "run the Kafka broker")
    lib.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"lib-{version}.", dir=lib.parent))
    cmd = [
        mvn, "-q", "-B", "-f", str(DEPLOY_DIR / "pom.xml"), f"-Dkafka.version={version}",
        "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={staging}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise DevKafkaError(f"could not fetch Kafka {version} jars with Maven (exit {proc.returncode}):\n{tail}")
    (staging / ".complete").touch()
    if lib.exists():  # another process won the race
        shutil.rmtree(staging, ignore_errors=True)
    else:
        staging.rename(lib)
    return lib


@dataclass
class DevKafka:
    """One broker process. ``start()`` / ``stop()`` are idempotent; ``restart()`` keeps the data."""

    data_dir: Path
    broker_port: int = 0
    controller_port: int = 0
    version: str = KAFKA_VERSION
    cache_dir: Path | None = None
    extra_properties: dict[str, str] = field(default_factory=dict)
    format_args: list[str] = field(default_factory=list)  # e.g. --add-scram for SCRAM users
    start_timeout_s: float = 90.0
    preexec_fn: Callable[[], None] | None = field(default=None, repr=False)  # e.g. a parent-death signal
    pid: int | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    def _java(self, lib: Path) -> list[str]:
        java = _require_tool("java", "run the Kafka broker")
        log4j = f"-Dlog4j2.configurationFile={DEPLOY_DIR / 'log4j2.properties'}"
        return [java, *JVM_OPTS, log4j, f"-Dkafka.logs.dir={self.data_dir}", "-cp", f"{lib}/*"]

    def _format(self, lib: Path) -> None:
        props = self.data_dir / "server.properties"
        cmd = [*self._java(lib), "kafka.tools.StorageTool", "format", "--standalone",
               "-t", new_cluster_id(), "-c", str(props), *self.format_args]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise DevKafkaError(f"formatting the KRaft data directory failed:\n{proc.stderr or proc.stdout}")

    def start(self) -> DevKafka:
        """Start (formatting a fresh data dir first); auto-picked ports are re-picked if taken meanwhile."""
        if self.running():
            return self
        auto_ports = not (self.broker_port or self.controller_port)
        for attempt in range(3):
            try:
                return self._start_once()
            except DevKafkaError as exc:
                lost_race = auto_ports and "Address already in use" in str(exc)
                if not lost_race or attempt == 2:
                    raise
                # Another process took a port between free_port() and the broker's bind: start over.
                shutil.rmtree(self.data_dir / "kraft-logs", ignore_errors=True)
                self.broker_port = self.controller_port = 0
        raise AssertionError("unreachable")

    def _start_once(self) -> DevKafka:
        lib = ensure_jars(self.version, self.cache_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        fresh = not (self.data_dir / "kraft-logs" / "meta.properties").exists()
        if fresh:
            self.broker_port = self.broker_port or free_port()
            self.controller_port = self.controller_port or free_port()
            template = (DEPLOY_DIR / "server.properties.in").read_text(encoding="utf-8")
            props.write_text(
                render_server_properties(
                    template,
                    data_dir=self.data_dir,
                    broker_port=self.broker_port,
                    controller_port=self.controller_port,
                    extra=self.extra_properties,
                ),
                encoding="utf-8",
            )
            self._format(lib)
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [*self._java(lib), "kafka.Kafka", str(props)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not the broker directly
                preexec_fn=self.preexec_fn,
            )
        self.pid = self._proc.pid
        self._wait_ready(log_offset)
        return self

    def _wait_ready(self, log_offset: int) -> None:
        """Ready = this process logged "Kafka Server started" and its port accepts connections.

        The log line guards against a false positive: when another process holds the port, a
        TCP connect succeeds against *it* while our broker is failing to bind.
        """
        deadline = time.monotonic() + self.start_timeout_s
        started = False
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                cause = ""
                if "Address already in use" in self._log_since(log_offset):
                    cause = f" (Address already in use: port {self.broker_port} or {self.controller_port} is taken)"
                raise DevKafkaError(
                    f"the broker exited with code {self._proc.returncode} while starting{cause}:\n{self._log_tail()}"
                )
            if not started:
                started = STARTED_LINE in self._log_since(log_offset)
            if started:
                try:
                    with socket.create_connection(("127.0.0.1", self.broker_port), timeout=0.5):
                        return
                except OSError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise DevKafkaError(f"the broker did not become ready within {self.start_timeout_s:.0f} s:\n{self._log_tail()}")

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no broker log)"

    def running(self) -> bool:
        return self.pid is not None and _alive(self.pid)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (Kafka's shutdown hook flushes and closes), bounded wait, then SIGKILL."""
        if self.pid is None:
            return
        _terminate(self.pid, timeout_s, self._proc)
        self.pid = None
        self._proc = None

    def kill(self) -> None:
        """SIGKILL without a clean shutdown (fault drills)."""
        if self.pid is not None:
            _terminate(self.pid, 0.0, self._proc)
            self.pid = None
            self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def state(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "bootstrap": self.bootstrap,
            "broker_port": self.broker_port,
            "controller_port": self.controller_port,
            "data_dir": str(self.data_dir),
            "version": self.version,
        }

    def save_state(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.state(), indent=2), encoding="utf-8")

    @classmethod
    def load_state(cls, path: Path) -> DevKafka:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DevKafkaError(f"no dev broker state at {path}: is it started?") from exc
        return cls(
            data_dir=Path(raw["data_dir"]),
            broker_port=int(raw["broker_port"]),
            controller_port=int(raw["controller_port"]),
            version=str(raw["version"]),
            pid=raw.get("pid"),
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _terminate(pid: int, timeout_s: float, proc: subprocess.Popen[bytes] | None) -> None:
    def gone() -> bool:
        if proc is not None:
            return proc.poll() is not None
        return not _alive(pid)

    if gone():
        return
    if timeout_s > 0:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if gone():
                return
            time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if proc is not None:
        proc.wait(timeout=10)
    else:
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
