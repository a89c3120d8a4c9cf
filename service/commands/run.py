"""``runstream run [--role uploader|aggregator|all]``: the long-running service.

The aggregator role also serves the query API (build_query_app) on http_host:http_port,
reading the state store through its own connection. SIGTERM/SIGINT set one stop event
that every role watches, so shutdown is orderly (final commit, leave the group, exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any, cast

from aiohttp import web

from service.config import Settings
from service.errors import ConfigError

log = logging.getLogger("runstream.run")
ROLES = ("uploader", "aggregator", "all")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the uploader and/or the aggregator (with the query API)")
    p.add_argument("--role", choices=ROLES, default="all", help="which consumer(s) to run (default %(default)s)")
    p.add_argument("--no-http", action="store_true", help="do not start the HTTP API")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    if not settings.kafka_bootstrap:
        raise ConfigError("RUNSTREAM_KAFKA_BOOTSTRAP is not set; start a broker with 'runstream dev-kafka start'")
    asyncio.run(run_service(settings, args.role, http=not args.no_http))
    return 0


def _uploader_entry() -> Callable[[Settings, asyncio.Event], Coroutine[Any, Any, None]]:
    # --- HOOK: the uploader role (consumers/uploader.py, owned by the uploader colleague) -------
    try:
        module = importlib.import_module("consumers.uploader")
    except ModuleNotFoundError as exc:
        if exc.name == "consumers.uploader":
            raise ConfigError(
                "the uploader role is not available in this build (consumers/uploader.py is missing); "
                "run with --role aggregator"
            ) from exc
        raise
    fn = getattr(module, "run_uploader", None)
    if fn is None:
        raise ConfigError("consumers.uploader has no run_uploader(settings, stop)")
    return cast(Callable[[Settings, asyncio.Event], Coroutine[Any, Any, None]], fn)


async def run_service(settings: Settings, role: str, *, http: bool = True) -> None:
    """Run the chosen role(s) until SIGTERM/SIGINT; the first role to fail stops the others."""
    from consumers.aggregator import run_aggregator
    from service.query_api import build_query_app
    from service.state_store import open_backend

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    tasks: list[asyncio.Task[Any]] = []
    runner: web.AppRunner | None = None
    api_backend = None
    if role in ("uploader", "all"):
        tasks.append(asyncio.create_task(_uploader_entry()(settings, stop), name="uploader"))
    if role in ("aggregator", "all"):
        tasks.append(asyncio.create_task(run_aggregator(settings, stop), name="aggregator"))
        if http:
            api_backend = open_backend(settings)
            runner = web.AppRunner(build_query_app(api_backend, settings), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, settings.http_host, settings.http_port).start()
            log.info("query API on http://%s:%d/v1/model-runs", settings.http_host, settings.http_port)
    try:
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        stopper.cancel()
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise cast(BaseException, t.exception())
    finally:
        if runner is not None:
            await runner.cleanup()
        if api_backend is not None:
            api_backend.close()
