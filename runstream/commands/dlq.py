"""``runstream dlq replay``: the command-line shell over consumers/dlq/replay.py."""

from __future__ import annotations

import argparse
import asyncio
import sys

from consumers.dlq.headers import ERROR_CLASSES
from consumers.dlq.replay import replay
from service.config import Settings
from service.errors import ConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dlq", help="work with the dead-letter topic")
    dsub = p.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    r = dsub.add_parser("replay", help="re-publish DLQ messages to their source topics")
    r.add_argument("--error-class", action="append", dest="error_classes", choices=sorted(ERROR_CLASSES),
                   help="only this error class (repeatable; default: all)")
    r.add_argument("--limit", type=int, default=None, help="replay at most N messages")
    r.add_argument("--dry-run", action="store_true", help="list what would be replayed, send nothing")
    r.add_argument("--quiet", action="store_true", help="print only the summary")
    r.set_defaults(func=_run_replay)


def _run_replay(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be >= 1")
    stats = asyncio.run(replay(
        Settings(),
        error_classes=set(args.error_classes) if args.error_classes else None,
        limit=args.limit,
        dry_run=args.dry_run,
        out=None if args.quiet else sys.stdout,
    ))
    by_class = ", ".join(f"{k}={v}" for k, v in sorted(stats.replayed.items())) or "none"
    verb = "would replay" if args.dry_run else "replayed"
    print(f"{verb} {stats.total_replayed} of {stats.scanned} scanned ({by_class}); "
          f"skipped {stats.skipped} by filter, {stats.unreadable} without readable headers"
          + (f"; refused {stats.truncated} truncated (not replayable)" if stats.truncated else ""))
    return 0
