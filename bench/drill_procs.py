"""Processes the drill runs and watches: a private PostgreSQL, service role processes, RSS sampling."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else "python3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float | None:
    """Resident set size of a live process in MB (from /proc), None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free loopback port (what .ci/postgres does)."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
        if not bins:
            raise RuntimeError(
                "PostgreSQL is not installed (/usr/lib/postgresql/*/bin); set RUNSTREAM_TEST_POSTGRES_DSN"
            )
        self.bin = bins[-1]
        self.dir = Path(tempfile.mkdtemp(prefix="runstream-drill-pg."))
        self.port = free_port()
        self.dsn = f"postgresql://runstream@127.0.0.1:{self.port}/drill"

    def _as_pg(self, cmd: str) -> None:
        full = ["su", "postgres", "-s", "/bin/bash", "-c", cmd] if os.getuid() == 0 else ["bash", "-c", cmd]
        subprocess.run(full, check=True, capture_output=True)

    def start(self) -> str:
        if os.getuid() == 0:
            shutil.chown(self.dir, "postgres")
        self._as_pg(f"{self.bin}/initdb -D {self.dir}/data -U runstream --auth=trust -E UTF8")
        self._as_pg(
            f"{self.bin}/pg_ctl -D {self.dir}/data -l {self.dir}/log -o '-p {self.port} -k {self.dir} "
            f"-c listen_addresses=127.0.0.1 -c fsync=off' -w start"
        )
        subprocess.run([f"{self.bin}/psql", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "runstream",
                        "-d", "postgres", "-c", "CREATE DATABASE drill"], check=True, capture_output=True)  # fmt: skip
        return self.dsn

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._as_pg(f"{self.bin}/pg_ctl -D {self.dir}/data -m fast stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def fresh_database(dsn: str) -> str:
    """A new empty database on the server of ``dsn`` (so drills never share aggregator state)."""
    import psycopg

    name = f"drill_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{name.split('?')[0]}"


@dataclass
class ServiceProcess:
    """``python -m runstream <args>`` as a child process with its own log file."""

    name: str
    role: str  # uploader | aggregator | labelbox
    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    exit_codes: list[int] = field(default_factory=list)

    def start(self) -> None:
        with self.log.open("ab") as logf:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "runstream", *self.args],
                cwd=ROOT,
                env={**os.environ, **self.env, "PYTHONPATH": str(ROOT)},
                stdout=logf,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def alive(self) -> bool:
        return self.pid is not None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.kills += 1

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM and wait; SIGKILL after ``timeout_s``. Returns the exit code (-9 if killed)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        code = self.proc.returncode
        self.exit_codes.append(code)
        return code


@dataclass
class RssSampler:
    """Peak RSS per role and per process name, sampled by the caller (every second)."""

    peaks: dict[str, float] = field(default_factory=dict)  # process name -> MB
    role_peaks: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    started: float = field(default_factory=time.monotonic)

    def sample(self, procs: list[tuple[str, str, int | None]]) -> None:
        self.samples += 1
        for name, role, pid in procs:
            if pid is None:
                continue
            mb = rss_mb(pid)
            if mb is None:
                continue
            self.peaks[name] = max(self.peaks.get(name, 0.0), mb)
            self.role_peaks[role] = max(self.role_peaks.get(role, 0.0), mb)
