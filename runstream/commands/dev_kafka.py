"""``runstream dev-kafka start|stop|status``: the local development broker."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from devstack.kafka_broker import KAFKA_VERSION, DevKafka, default_cache_dir, ensure_jars

DEFAULT_STATE = Path(".runstream") / "dev-kafka.json"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dev-kafka", help="start, stop or inspect a local Apache Kafka broker (KRaft)")
    p.add_argument("action", choices=["start", "stop", "status", "fetch"], help="what to do")
    p.add_argument("--state", type=Path, default=DEFAULT_STATE, help="state file (default %(default)s)")
    p.add_argument("--data-dir", type=Path, default=None, help="data directory (default .runstream/kafka)")
    p.add_argument("--port", type=int, default=0, help="broker port (default: a free one)")
    p.add_argument("--controller-port", type=int, default=0, help="controller port (default: a free one)")
    p.add_argument("--version", default=KAFKA_VERSION, help="Kafka version (default %(default)s)")
    p.add_argument("--keep-data", action="store_true", help="on stop, keep the data directory")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.action == "fetch":
        t0 = time.monotonic()
        lib = ensure_jars(args.version)
        print(f"Kafka {args.version} jars in {lib} ({time.monotonic() - t0:.1f} s)")
        return 0
    if args.action == "start":
        if args.state.exists():
            old = DevKafka.load_state(args.state)
            if old.running():
                print(f"already running: {old.bootstrap} (pid {old.pid})")
                return 0
        data_dir = args.data_dir or args.state.parent / "kafka"
        broker = DevKafka(
            data_dir=data_dir.resolve(),
            broker_port=args.port,
            controller_port=args.controller_port,
            version=args.version,
            cache_dir=default_cache_dir(),
        )
        t0 = time.monotonic()
        broker.start()
        broker.save_state(args.state)
        print(f"Kafka {broker.version} ready at {broker.bootstrap} (pid {broker.pid}, {time.monotonic() - t0:.1f} s)")
        print(f"export RUNSTREAM_KAFKA_BOOTSTRAP={broker.bootstrap}")
        return 0
    if not args.state.exists():
        print("not running (no state file)")
        return 0 if args.action == "stop" else 1
    broker = DevKafka.load_state(args.state)
    if args.action == "status":
        print(json.dumps({**broker.state(), "running": broker.running()}, indent=2))
        return 0 if broker.running() else 1
    broker.stop()
    args.state.unlink(missing_ok=True)
    if not args.keep_data:
        import shutil

        shutil.rmtree(broker.data_dir, ignore_errors=True)
    print("stopped")
    return 0
