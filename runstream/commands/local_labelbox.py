"""``runstream local-labelbox``: run the local Labelbox-compatible API (DESIGN §7)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

from devstack.local_labelbox import DEFAULT_MAX_BODY_SIZE


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "local-labelbox",
        help="run the local Labelbox-compatible GraphQL API (SQLite-backed)",
        description="Serve the subset of Labelbox's GraphQL API that runstream and the labelbox SDK use.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8181)
    p.add_argument("--db", default="local_labelbox.sqlite3", help="SQLite file (survives restarts)")
    p.add_argument(
        "--api-key", action="append", dest="api_keys", default=None, help="accepted API key (repeatable)"
    )
    p.add_argument("--admin-token", default="local-admin", help="Bearer token for /admin")
    p.add_argument("--max-body-size", type=int, default=DEFAULT_MAX_BODY_SIZE, help="bytes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from devstack.local_labelbox.app import LocalLabelbox, serve_forever

    server = LocalLabelbox(
        args.db,
        api_keys=args.api_keys or ["local-api-key"],
        admin_token=args.admin_token,
        host=args.host,
        port=args.port,
        max_body_size=args.max_body_size,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(server))
    return 0
