"""Pure: remembered verdicts "Labelbox rejects this model run", each for a fixed time.

While a verdict holds, messages of that run are dead-lettered without any Labelbox call.
When it expires, ``get`` forgets it, so the next batch of the run goes to Labelbox again:
that one call (the probe) either succeeds (the run exists now) or renews the verdict for
another period. The clock is passed in, so expiry is tested without sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass

ERROR_CLASS = "labelbox.model_run"
_PREFIX = "Labelbox rejected model run "


@dataclass(frozen=True, slots=True)
class Verdict:
    model_run_id: str
    text: str  # Labelbox's error text
    since: float  # when this period's probe was rejected (the caller's clock)
    until: float  # when the verdict expires and one probe decides again
    periods: int  # consecutive periods the run was rejected (1 for the first)

    @property
    def message(self) -> str:
        """The DLQ message: names the run and carries Labelbox's text."""
        return dlq_message(self.model_run_id, self.text)


def dlq_message(model_run_id: str, text: str) -> str:
    return f"{_PREFIX}{model_run_id!r}: {text}"


def run_of_message(message: str) -> str | None:
    """The model run a ``labelbox.model_run`` DLQ message names (None if not one of ours)."""
    if not message.startswith(_PREFIX):
        return None
    rest = message[len(_PREFIX):]
    if len(rest) < 2 or rest[0] not in "'\"":
        return None
    end = rest.find(rest[0] + ":", 1)
    return rest[1:end] if end > 0 else None


class RunVerdicts:
    """Model run id -> Verdict, with a time to live; bounded by ``max_runs`` (oldest dropped)."""

    def __init__(self, ttl_s: float, *, max_runs: int = 10_000) -> None:
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, got {ttl_s}")
        self.ttl_s = ttl_s
        self._max = max_runs
        self._v: dict[str, Verdict] = {}
        self._periods: dict[str, int] = {}  # runs whose last probe was rejected: count of periods

    def __len__(self) -> int:
        """Verdicts stored (expired ones included until ``get`` forgets them)."""
        return len(self._v)

    def get(self, model_run_id: str, now: float) -> Verdict | None:
        """The verdict holding at ``now``; an expired one is forgotten (the next call probes)."""
        v = self._v.get(model_run_id)
        if v is None:
            return None
        if now >= v.until:
            del self._v[model_run_id]
            return None
        return v

    def reject(self, model_run_id: str, text: str, now: float) -> Verdict:
        """Record (or renew after a probe) the verdict for one period from ``now``."""
        periods = self._periods.pop(model_run_id, 0) + 1
        self._periods[model_run_id] = periods
        v = Verdict(model_run_id, text, now, now + self.ttl_s, periods)
        self._v.pop(model_run_id, None)
        self._v[model_run_id] = v
        while len(self._v) > self._max:
            oldest = next(iter(self._v))
            del self._v[oldest]
        while len(self._periods) > self._max:
            del self._periods[next(iter(self._periods))]
        return v

    def accepted(self, model_run_id: str) -> bool:
        """A call for the run succeeded: forget it. True when it had been rejected before."""
        self._v.pop(model_run_id, None)
        return self._periods.pop(model_run_id, None) is not None

    def active(self, now: float) -> list[Verdict]:
        """Verdicts holding at ``now``, oldest first (expired ones are left for ``get``)."""
        return [v for v in self._v.values() if now < v.until]

    def count(self, now: float) -> int:
        return sum(1 for v in self._v.values() if now < v.until)
