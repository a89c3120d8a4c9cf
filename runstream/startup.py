"""SIGTERM while the process is still starting: a clean stop (exit 0), nothing consumed yet.

Loading the service takes a second or more on a busy node (aiokafka, aiohttp, pydantic, msgspec), and
an orchestrator may stop a pod in that window (a rollout, a scale-down, the drill's restarts). Until a
command installs its own handling, SIGTERM raises ``SystemExit(0)`` instead of killing the process by
the signal. Commands that do not run until stopped get the default disposition back before they run
(:func:`release`), so an interrupted backfill still ends by the signal, not with a success code.
"""

from __future__ import annotations

import signal
from types import FrameType


def stop_while_starting(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def install() -> None:
    signal.signal(signal.SIGTERM, stop_while_starting)


def release() -> None:
    """The default disposition back, if :func:`install` set it (a no-op in any other process)."""
    if signal.getsignal(signal.SIGTERM) is stop_while_starting:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
