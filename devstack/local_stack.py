"""The local stack behind ``make run``: broker, local Labelbox API, service, demo stream.

Each part runs as its own process (as in production), started only when the user did not
point runstream at a real one (``RUNSTREAM_KAFKA_BOOTSTRAP`` / ``RUNSTREAM_LABELBOX_URL``).
Stopping happens in reverse order: producers first, the broker last, so nothing in flight
is cut off.

Children never outlive ``runstream up``, however it ends: each gets a parent-death signal
(``die_with_parent``: SIGTERM when up's process is gone, Linux ``PR_SET_PDEATHSIG``), so a crash,
SIGKILL or a closed terminal still stops them through their own orderly shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from devstack.demo_data import DemoCatalog
from devstack.kafka_broker import DevKafka, free_port
from service.config import Settings
from service.errors import RunstreamError

LOCAL_API_KEY = "local-dev-key"
LOCAL_ADMIN_TOKEN = "local-admin"


class LocalStackError(RunstreamError):
    """A part of the local stack failed to start."""


PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child receive ``sig`` when its parent dies (Linux; None elsewhere).

    The kernel ties the signal to the *thread* that forked: fork from a thread that lives as long
    as the parent (the main thread, or an executor thread, which lasts until the loop closes).
    """
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def catalog_seed_requests(catalog: DemoCatalog) -> list[tuple[str, dict[str, Any]]]:
    """Admin calls that make the local Labelbox API know the demo's rows, projects, labels, runs.

    Model runs start empty: the uploader registers labels and data rows itself, as it must
    against real Labelbox.
    """
    cat = catalog.to_json()
    return [
        ("/admin/data-rows", {"dataRows": [{"id": d["id"], "globalKey": d["global_key"]} for d in cat["data_rows"]]}),
        ("/admin/projects", {"projects": cat["projects"]}),
        (
            "/admin/labels",
            {
                "labels": [
                    {"id": lb["id"], "projectId": lb["project_id"], "dataRowId": lb["data_row_id"]}
                    for lb in cat["labels"]
                ]
            },
        ),
        ("/admin/model-runs", {"modelRuns": [{"id": m["id"], "name": m["name"]} for m in cat["model_runs"]]}),
    ]


@dataclass
class LocalStack:
    settings: Settings
    data_dir: Path
    http_port: int = 8080
    broker: DevKafka | None = None
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    labelbox_admin: str | None = None

    async def start_broker(self) -> str:
        if self.settings.kafka_bootstrap:
            return self.settings.kafka_bootstrap
        self.broker = DevKafka(data_dir=(self.data_dir / f"kafka-{int(time.time())}").resolve(),
                               preexec_fn=die_with_parent())
        await asyncio.to_thread(self.broker.start)
        return self.broker.bootstrap

    async def spawn(self, name: str, *args: str, log: Path | None = None) -> asyncio.subprocess.Process:
        out = log.open("ab") if log else None
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runstream", *args,
                env={**os.environ, **self.env},
                stdout=out or asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us; we stop children in order
                preexec_fn=die_with_parent(),
            )  # fmt: skip
        finally:
            if out:
                out.close()
        self.procs[name] = proc
        return proc

    async def wait_http(self, url: str, name: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                proc = self.procs.get(name)
                if proc is not None and proc.returncode is not None:
                    raise LocalStackError(f"{name} exited with code {proc.returncode}; see {self.data_dir}/{name}.log")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status < 500:
                            return
                await asyncio.sleep(0.25)
        raise LocalStackError(f"{name} did not answer at {url} within {timeout_s:.0f} s")

    async def start_labelbox(self, catalog: DemoCatalog) -> str:
        if self.settings.labelbox_url:
            return self.settings.labelbox_url
        port = free_port()
        await self.spawn(
            "local-labelbox", "local-labelbox", "--port", str(port),
            "--db", str(self.data_dir / "local-labelbox.sqlite3"),
            "--api-key", LOCAL_API_KEY, "--admin-token", LOCAL_ADMIN_TOKEN,
            log=self.data_dir / "local-labelbox.log",
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        await self.wait_http(base + "/admin/integrity", "local-labelbox")
        self.labelbox_admin = base
        headers = {"Authorization": f"Bearer {LOCAL_ADMIN_TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            for path, body in catalog_seed_requests(catalog):
                async with http.post(base + path, json=body) as resp:
                    if resp.status >= 300:
                        raise LocalStackError(f"seeding {path} failed: {resp.status} {await resp.text()}")
        self.env["RUNSTREAM_LABELBOX_API_KEY"] = LOCAL_API_KEY
        return base + "/graphql"

    async def stop(self) -> None:
        for name in ("demo", "service", "local-labelbox"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.returncode is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=self.settings.shutdown_grace_s + 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
            self.broker = None


async def fetch_json(http: aiohttp.ClientSession, url: str, headers: Mapping[str, str] | None = None) -> Any:
    try:
        async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=3)) as resp:
            return await resp.json() if resp.status == 200 else None
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return None
