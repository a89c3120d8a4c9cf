"""``runstream up``: the whole local stack on defaults (what ``make run`` starts).

Starts what is not configured — the dev broker without ``RUNSTREAM_KAFKA_BOOTSTRAP``, the
local Labelbox-compatible API (seeded with the demo catalog) without
``RUNSTREAM_LABELBOX_URL`` — then the service (uploader + aggregator + HTTP API) and the demo
stream, prints where to look and a live summary, and stops everything on Ctrl-C.

A closed stdout (``runstream up | head``, a ``tee`` killed by Ctrl-C) never ends ``up`` early:
output goes to /dev/null from then on and the stack keeps running until a signal, and then stops
in order. SIGHUP (terminal closed) stops it like Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp

from devstack.demo_data import demo_catalog
from devstack.kafka_broker import free_port
from devstack.local_stack import LocalStack, fetch_json, port_is_free
from runstream.commands.topics import dlq_topic_configs
from service.config import Settings
from service.kafka import create_topics


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("up", help="run the whole local stack: broker, local Labelbox API, service, demo")
    p.add_argument("--data-dir", type=Path, default=Path(".runstream"), help="local state (default %(default)s)")
    p.add_argument("--model-runs", type=int, default=2, help="demo model runs (default %(default)s)")
    p.add_argument("--data-rows", type=int, default=20, help="demo data rows per run (default %(default)s)")
    p.add_argument("--rate", type=float, default=20.0, help="demo events per second (default %(default)s)")
    p.add_argument("--no-demo", action="store_true", help="do not start the demo stream")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    p.add_argument("--summary-every", type=float, default=5.0, help="seconds between summaries")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return asyncio.run(_up(args))


def say(text: str = "") -> None:
    """print() that survives a closed stdout: the first failed write sends stdout to /dev/null."""
    try:
        print(text, flush=True)
    except (BrokenPipeError, ValueError, OSError):
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # also keeps the interpreter's exit flush quiet
            os.close(devnull)


async def _up(args: argparse.Namespace) -> int:
    settings = Settings()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    http_port = settings.http_port
    if http_port == 0 or not port_is_free(settings.http_host, http_port):
        http_port = free_port()
    stack = LocalStack(settings=settings, data_dir=args.data_dir.resolve(), http_port=http_port)
    catalog = demo_catalog(0, model_runs=args.model_runs, data_rows_per_run=args.data_rows)
    try:
        t0 = time.monotonic()
        bootstrap = await stack.start_broker()
        say(f"Kafka        {bootstrap}" + (" (dev broker started)" if stack.broker else " (configured)"))
        topics = [settings.topic_predictions, settings.topic_metrics, settings.topic_labels, settings.topic_dlq]
        await create_topics(bootstrap, topics, partitions=6, configs=dlq_topic_configs(settings),
                            **settings.kafka_client_options())
        lb_url = await stack.start_labelbox(catalog)
        say(f"Labelbox     {lb_url}" + (" (local API, demo catalog seeded)" if stack.labelbox_admin else ""))
        stack.env.update({
            "RUNSTREAM_KAFKA_BOOTSTRAP": bootstrap,
            "RUNSTREAM_LABELBOX_URL": lb_url,
            "RUNSTREAM_HTTP_PORT": str(http_port),
            "RUNSTREAM_STATE_SQLITE_PATH": str(stack.data_dir / "state.sqlite3"),
        })  # fmt: skip
        await stack.spawn("service", "run", "--role", "all", log=stack.data_dir / "service.log")
        base = f"http://{settings.http_host}:{http_port}"
        await stack.wait_http(base + "/healthz", "service")
        say(f"Service      {base}  (logs: {stack.data_dir / 'service.log'})")
        say(f"Dashboard    {base}/")
        say(f"API          {base}/v1/model-runs   OpenAPI {base}/openapi.json   Prometheus {base}/metrics")
        if not args.no_demo:
            await stack.spawn(
                "demo", "demo", "--rate", str(args.rate), "--model-runs", str(args.model_runs),
                "--data-rows", str(args.data_rows), "--duration", str(args.duration or 10**9),
                log=stack.data_dir / "demo.log",
            )  # fmt: skip
            say(f"Demo stream  {args.rate:g} events/s, {args.model_runs} model runs, a few bad events on purpose")
        say(f"ready in {time.monotonic() - t0:.1f} s — Ctrl-C stops everything\n")
        await _summaries(stack, settings, base, stop, args)
    finally:
        say("stopping…")
        await stack.stop()
        say("stopped")
    return 0


async def _summaries(
    stack: LocalStack, settings: Settings, base: str, stop: asyncio.Event, args: argparse.Namespace
) -> None:
    deadline = time.monotonic() + args.duration if args.duration else None
    token = settings.api_token.get_secret_value() if settings.api_token else None
    api_headers = {"Authorization": f"Bearer {token}"} if token else None
    admin_headers = {"Authorization": "Bearer local-admin"}
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            timeout = args.summary_every
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=timeout)
            say(await _summary_line(http, stack, base, api_headers, admin_headers))
            if deadline is not None and time.monotonic() >= deadline:
                return
            for name, proc in stack.procs.items():
                if proc.returncode is not None and name != "demo":
                    say(f"{name} exited with code {proc.returncode}; see {stack.data_dir / (name + '.log')}")
                    return


async def _summary_line(
    http: aiohttp.ClientSession,
    stack: LocalStack,
    base: str,
    api_headers: dict[str, str] | None,
    admin_headers: dict[str, str],
) -> str:
    parts = [time.strftime("%H:%M:%S")]
    runs = await fetch_json(http, base + "/v1/model-runs", api_headers) or {"model_runs": []}
    stored_total = {"predictions": 0, "metrics": 0}
    for run in runs["model_runs"]:
        doc = await fetch_json(http, f"{base}/v1/model-runs/{run['id']}/metrics", api_headers)
        if doc:
            parts.append(f"{run['id'][:10]}: {len(doc['metrics'])} metrics aggregated")
        if stack.labelbox_admin:
            url = f"{stack.labelbox_admin}/admin/model-runs/{run['id']}/counts"
            counts = await fetch_json(http, url, admin_headers)
            if counts:
                stored_total["predictions"] += counts.get("predictions", 0)
                stored_total["metrics"] += counts.get("metrics", 0)
    if stack.labelbox_admin:
        parts.append(f"Labelbox stored {stored_total['predictions']} predictions, {stored_total['metrics']} metrics")
    dlq = await fetch_json(http, base + "/v1/dlq", api_headers)
    if dlq:
        classes = ", ".join(f"{k} {v}" for k, v in dlq["by_class"].items())
        parts.append(f"DLQ {dlq['total']}" + (f" ({classes})" if classes else ""))
    return " | ".join(parts)
