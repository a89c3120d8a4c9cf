"""The ``runstream`` command line (also ``python -m service``).

Each command lives in its own module under ``service/commands/`` and exposes
``register(subparsers)``; this file only assembles them, so adding a command never
touches another command's code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from service.errors import RunstreamError

# Modules under service.commands, in the order --help lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "up",
    "run",
    "backfill",
    "demo",
    "local_labelbox",
    "dev_kafka",
    "topics",
    "dlq",
    "schema",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runstream",
        description="Stream model-run predictions and custom metrics from Kafka into Labelbox.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"service.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"service.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except RunstreamError as exc:
        print(f"runstream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)
