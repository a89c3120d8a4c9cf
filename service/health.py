"""Liveness and readiness from the components' own state (pure; the HTTP edge is service.api.ops).

Liveness answers "is the loop still turning?": a component whose loop has not made
progress for ``stall_after_s`` is dead and should be restarted. Readiness answers "should
traffic/lag scaling count on me?": started, assigned, not recovering, no fatal error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Probe:
    """One component, seen through two callables so the core stays free of consumer types."""

    name: str
    last_progress: Callable[[], float]  # time.monotonic() of the last loop iteration
    not_ready_reason: Callable[[], str | None]  # None when ready


@dataclass(frozen=True)
class Verdict:
    ok: bool
    checks: dict[str, str]  # component -> "ok" or the reason

    def as_json(self) -> dict[str, object]:
        return {"status": "ok" if self.ok else "fail", "checks": self.checks}


def liveness(probes: Sequence[Probe], now: float, stall_after_s: float) -> Verdict:
    checks: dict[str, str] = {}
    for p in probes:
        idle = now - p.last_progress()
        checks[p.name] = "ok" if idle <= stall_after_s else f"no loop progress for {idle:.0f} s"
    return Verdict(all(v == "ok" for v in checks.values()), checks)


def readiness(probes: Sequence[Probe]) -> Verdict:
    checks = {p.name: (p.not_ready_reason() or "ok") for p in probes}
    return Verdict(bool(probes) and all(v == "ok" for v in checks.values()), checks)
