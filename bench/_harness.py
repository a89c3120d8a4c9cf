"""Setup shared by the bench scripts.

``kafka_bootstrap``: the broker a bench runs against. ``make bench`` (run_all.py) starts one dev broker for
the whole run and hands it over in ``RUNSTREAM_KAFKA_BOOTSTRAP``; a script run by hand starts its own.
"""

from __future__ import annotations

import contextlib
import os
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
