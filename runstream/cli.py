"""The ``runstream`` command line (also ``python -m runstream``): the top layer.

Each command lives in its own module under ``runstream/commands/`` and exposes
``register(subparsers)``; this file only assembles them, so adding a command never
touches another command's code. The CLI is the top layer: the one package that imports the roles
in ``consumers/`` and the dev tooling in ``devstack/`` (docs/DEVELOPING.md, "Layers";
tests/unit/test_layers.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from runstream import startup
from runstream.commands import backfill, demo, dev_kafka, dlq, local_labelbox, run, schema, topics, up
from service.errors import RunstreamError

# Modules under runstream.commands, in the order --help lists them.
COMMAND_MODULES: tuple[ModuleType, ...] = (up, run, backfill, demo, local_labelbox, dev_kafka, topics, dlq, schema)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runstream",
        description="Stream model-run predictions and custom metrics from Kafka into Labelbox.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "stops_on_sigterm", False):
        startup.release()
    try:
        result = args.func(args)
    except RunstreamError as exc:
        print(f"runstream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)
