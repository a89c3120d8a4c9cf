"""``runstream backfill FILES...``: Labelbox NDJSON and event files into Kafka (see ``service.backfill``).

Exit codes: 0 all lines sent; 1 some lines were bad (reported with file:line, not sent) or nothing
could be sent; 2 the backfill could not run (Kafka unreachable, unreadable file).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TextIO

import orjson
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from service.backfill import DEFAULT_ROWS_PER_EVENT, BackfillStats, BadLine, run_backfill
from service.config import Settings

MAX_PRINTED_BAD = 50


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "backfill",
        help="send Labelbox NDJSON / event files (gzip too) into Kafka at full speed",
        description="Reads Labelbox NDJSON prediction/metric rows (a row with metricValue is a metric; the model "
        "run comes from --model-run) and runstream event files (one event per line, with model_run_id), plain "
        "or gzip (detected by magic bytes). Bad lines are reported as file:line and not sent.",
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="NDJSON or event files, plain or gzip")
    p.add_argument("--model-run", help="model run id for Labelbox NDJSON rows (event lines carry their own)")
    p.add_argument("--rate", type=float, help="limit to this many events/s (default: as fast as possible)")
    p.add_argument("--dry-run", action="store_true", help="read and validate only; send nothing")
    p.add_argument(
        "--rows-per-event",
        type=int,
        default=DEFAULT_ROWS_PER_EVENT,
        help="NDJSON rows grouped per event (default %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="validate in this many extra processes (default %(default)s: in this one; validation is the CPU cost)",
    )
    p.add_argument("--compression", choices=["gzip", "snappy", "lz4", "zstd"], help="Kafka compression codec")
    p.add_argument("--report", type=Path, help="also write every bad line as JSON lines to this file")
    p.set_defaults(func=_run)


def _print_summary(stats: BackfillStats, out: TextIO) -> None:
    verb = "would send" if stats.dry_run else "sent"
    kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.by_kind.items())) or "none"
    print(
        f"backfill: {stats.files} file(s), {stats.lines_read:,} lines read, {stats.rows:,} rows, "
        f"{verb} {stats.events:,} events ({kinds}), {stats.bad_lines:,} bad lines, "
        f"{stats.elapsed_s:.2f} s, {stats.events_per_s:,.0f} events/s",
        file=out,
    )


def _run(args: argparse.Namespace) -> int:
    settings = Settings()
    err = Console(file=sys.stderr)
    report = args.report.open("w", encoding="utf-8") if args.report else None
    printed = 0

    progress = Progress(
        TextColumn("[bold]backfill"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[events]:,} events · {task.fields[eps]:,.0f} events/s · {task.fields[bad]:,} bad"),
        TimeElapsedColumn(),
        console=err,
        disable=not err.is_terminal,
        transient=False,
    )
    total = sum(p.stat().st_size for p in args.files if p.is_file())
    task = progress.add_task("backfill", total=total, events=0, eps=0.0, bad=0)

    def on_bad(bad: BadLine) -> None:
        nonlocal printed
        if report is not None:
            report.write(orjson.dumps(bad.to_json()).decode() + "\n")
        if printed < MAX_PRINTED_BAD:
            printed += 1
            progress.console.print(f"[red]bad line[/red] {bad}", markup=True, highlight=False, soft_wrap=True)

    def on_progress(stats: BackfillStats) -> None:
        progress.update(
            task, completed=stats.bytes_read, events=stats.events, eps=stats.events_per_s, bad=stats.bad_lines
        )

    try:
        with progress:
            stats = asyncio.run(
                run_backfill(
                    args.files,
                    settings,
                    model_run=args.model_run,
                    rate=args.rate,
                    dry_run=args.dry_run,
                    max_rows=args.rows_per_event,
                    workers=args.workers,
                    on_bad=on_bad,
                    on_progress=on_progress,
                    compression_type=args.compression,
                )
            )
    finally:
        if report is not None:
            report.close()

    if stats.bad_lines:
        more = stats.bad_lines - printed
        print(f"validation report: {stats.bad_lines:,} bad line(s), not sent", file=sys.stderr)
        if more > 0:
            hint = f"; all of them are in {args.report}" if args.report else "; use --report FILE for all of them"
            print(f"  ... {more:,} more not shown{hint}", file=sys.stderr)
    _print_summary(stats, sys.stdout)
    if stats.bad_lines:
        return 1
    if stats.events == 0:
        print("backfill: nothing to send", file=sys.stderr)
        return 1
    return 0
