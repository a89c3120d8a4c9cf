"""Setup shared by the bench scripts.

``kafka_bootstrap``: the broker a bench runs against. ``make bench`` (run_all.py) starts one dev broker for
the whole run and hands it over in ``RUNSTREAM_KAFKA_BOOTSTRAP``; a script run by hand starts its own.

``scratch_dir``: a bench's temporary directory, removed when the script exits (a 1M-event run leaves
gigabytes of stores, topics and files behind otherwise). ``RUNSTREAM_BENCH_KEEP=1`` keeps it to look at.
A script killed by a signal (run_all.py kills a step past its time limit) leaves its directory behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def kafka_bootstrap(data_dir: Path) -> Iterator[str]:
    """``RUNSTREAM_KAFKA_BOOTSTRAP`` when set, else a dev broker in ``data_dir``, stopped on exit."""
    given = os.environ.get("RUNSTREAM_KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    from devstack.kafka_broker import DevKafka

    broker = DevKafka(data_dir=data_dir).start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


def scratch_dir(prefix: str) -> Path:
    """A new temporary directory, removed with its contents at exit unless ``RUNSTREAM_BENCH_KEEP`` is set."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if not os.environ.get("RUNSTREAM_BENCH_KEEP"):
        atexit.register(shutil.rmtree, path, True)
    return path
