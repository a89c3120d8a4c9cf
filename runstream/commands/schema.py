"""``runstream schema NAME``: print the JSON Schema of an event; ``--write DIR`` regenerates the files."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.errors import ConfigError
from service.events.schema import SCHEMA_NAMES, schema_json, write_schemas


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "schema",
        help="print an event's JSON Schema (validate events before sending, in any language)",
        description="Print the JSON Schema (draft 2020-12) of an event, generated from the event contract. "
        "See docs/EVENTS.md.",
    )
    p.add_argument("name", nargs="?", choices=SCHEMA_NAMES, help="which event")
    p.add_argument(
        "--write",
        metavar="DIR",
        type=Path,
        help="write all schemas as DIR/<name>.json instead of printing one (the repository keeps them in schemas/)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.write is not None:
        for path in write_schemas(args.write):
            print(path)
        return 0
    if args.name is None:
        raise ConfigError(f"name an event schema ({', '.join(SCHEMA_NAMES)}) or give --write DIR")
    print(schema_json(args.name), end="")
    return 0
